"""Which attention kernel a model uses, chosen per backend and sequence length.

    xla      the query-blocked softmax of models/attention_block.py: on CPU as fast or faster than
             flash for wider models at short lengths (docs/MEMORY.md), but its backward pass keeps
             the float32 probabilities, [B, H, L, L] a layer.
    flash    never keeps the probabilities: cuDNN's fused kernel on GPU (`jax.nn.dot_product_attention`),
             Pallas' flash-attention kernel on TPU, and elsewhere (or when those cannot take the
             call) the blocked online-softmax attention of models/flash_attention.py.
    auto     xla on CPU up to CPU_FLASH_FROM events (where it is faster), flash otherwise.

The choice is a model option (`model.attention` in a sweep spec); values and gradients agree to
float tolerance whichever kernel runs, so it changes memory and speed, not results.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from medscale.models.flash_attention import flash_attention

ATTENTION_CHOICES = ("auto", "xla", "flash")
CPU_FLASH_FROM = 2048  # from this length on CPU the [B, H, L, L] residuals cost more than speed buys


def resolve_attention(choice: str, backend: str, seq_len: int) -> str:
    """'xla' or 'flash' for a model option on a backend ('cpu', 'gpu', 'tpu')."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention {choice!r}: choose one of {ATTENTION_CHOICES}")
    if choice != "auto":
        return choice
    return "xla" if backend == "cpu" and seq_len < CPU_FLASH_FROM else "flash"


def _cudnn(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, causal, segment_ids_BxL):
    """cuDNN fused attention: [B, L, H, K], bf16/fp16; scale 1 (q is already scaled)."""
    mask = None
    if segment_ids_BxL is not None:
        mask = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask, scale=1.0,
                                        is_causal=causal, implementation="cudnn")


def _pallas_tpu(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, causal, segment_ids_BxL):
    """Pallas' TPU flash-attention kernel, which takes [B, H, L, K]."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa

    seg = None
    if segment_ids_BxL is not None:
        seg = tpu_fa.SegmentIds(q=segment_ids_BxL.astype(jnp.int32), kv=segment_ids_BxL.astype(jnp.int32))
    bhlk = lambda t: t.transpose(0, 2, 1, 3)  # noqa: E731
    out = tpu_fa.flash_attention(bhlk(q_BxLxHxK), bhlk(k_BxSxHxK), bhlk(v_BxSxHxK), segment_ids=seg,
                                 causal=causal, sm_scale=1.0)
    return bhlk(out)


def memory_efficient_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, *, causal: bool,
                               segment_ids_BxL=None) -> jax.Array:
    """[B, L, H, K] attention without stored probabilities, with the fastest kernel this backend
    takes; q is already scaled."""
    backend = jax.default_backend()
    kernel = {"gpu": _cudnn, "cuda": _cudnn, "tpu": _pallas_tpu}.get(backend)
    if kernel is not None and (backend == "tpu" or q_BxLxHxK.dtype != jnp.float32):  # cuDNN: bf16/fp16 only
        try:  # trace time: a kernel that does not take these shapes or dtypes falls back
            return kernel(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, causal, segment_ids_BxL)
        except (ImportError, NotImplementedError, ValueError, TypeError, RuntimeError) as err:
            # say so: a run on the blocked fallback is correct but slower than the backend's kernel
            warnings.warn(f"{kernel.__name__.strip('_')} attention does not take these inputs ({err}); "
                          "using the blocked flash attention instead", RuntimeWarning, stacklevel=2)
    return flash_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, causal=causal, segment_ids_BxL=segment_ids_BxL)
