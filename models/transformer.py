"""One pre-norm transformer for both objectives: RMSNorm, rotary attention, SwiGLU, no biases.

causal=True is the decoder (next event), causal=False the encoder (masked event). `segment_ids`
keep subjects packed into one window from attending to each other in both.

Tensor names carry their shapes: B batch, L length (queries), S length (keys), D d_model,
H heads, K head_dim, F d_ff, V vocab. Parameters are stored in `param_dtype` and used in
`compute_dtype`; attention logits, softmax, norms and the output logits are float32.
Parameters carry logical axis names (`out_sharding`), mapped to the mesh by models/sharding.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from medscale.models.attention_block import attend_block
from medscale.models.attention_impl import memory_efficient_attention, resolve_attention
from medscale.models.config import ModelConfig
from medscale.models.options import REMAT
from medscale.models.projection import project
from medscale.models.sharding import constrain

ROPE_BASE = 10_000.0
QUERY_BLOCK = 128
REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


def default_compute_dtype() -> jnp.dtype:
    """bfloat16 on accelerators, float32 on CPU (where bf16 matmuls are emulated and slow)."""
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


def _param(rngs: nnx.Rngs, std: float | None, shape: tuple[int, ...],
           axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """Truncated-normal(std) parameter, or ones when std is None, named by logical axes."""
    init = jax.nn.initializers.ones if std is None else jax.nn.initializers.truncated_normal(std)
    # eager_sharding=False: the model also builds outside a mesh; step.py places it on one.
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, d: int, *, rngs: nnx.Rngs, param_dtype):
        self.scale_D = _param(rngs, None, (d,), ("norm",), param_dtype)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * self.scale_D[...].astype(jnp.float32)).astype(x_BxLxD.dtype)


def rope_tables(positions_L: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """sin, cos [L, K/2] (or [B, L, K/2] for positions [B, L]) for rotary embeddings, float32."""
    inv_freq = ROPE_BASE ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_LxK2 = positions_L.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angle_LxK2), jnp.cos(angle_LxK2)


def apply_rope(x_BxLxHxK: jax.Array, sin_LxK2: jax.Array, cos_LxK2: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_LxK2[..., None, :], cos_LxK2[..., None, :]  # broadcast over heads
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.compute_dtype, self.causal = compute_dtype, cfg.causal
        # separate q/k/v (and gate/up below) rather than fused: slicing a fused output costs
        # pad-and-add copies in the backward pass, measurable on CPU
        self.q_DxHxK, self.k_DxHxK, self.v_DxHxK = (
            _param(rngs, D**-0.5, (D, H, K), ("embed", "heads", "head_dim"), param_dtype)
            for _ in range(3))
        # residual-branch outputs scaled by 1/sqrt(2 n_layers) (GPT-2) to keep the stream O(1)
        self.out_HxKxD = _param(rngs, (H * K) ** -0.5 / math.sqrt(2 * cfg.n_layers), (H, K, D),
                                ("heads", "head_dim", "embed"), param_dtype)

    def qkv(self, x_BxLxD, sin_LxK2, cos_LxK2):
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = project(
            x_BxLxD, *(w[...].astype(self.compute_dtype) for w in (self.q_DxHxK, self.k_DxHxK, self.v_DxHxK)))
        q_BxLxHxK = apply_rope(q_BxLxHxK, sin_LxK2, cos_LxK2)
        k_BxLxHxK = apply_rope(k_BxLxHxK, sin_LxK2, cos_LxK2)
        return (constrain(t, ("batch", "length", "act_heads", None))
                for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))

    def attend(self, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_Bx1xLxS, segment_ids_BxL=None, kernel="xla"):
        """Softmax attention: kernel "flash" keeps no probabilities (models/attention_impl.py);
        "xla" runs QUERY_BLOCK queries at a time.

        Blocks keep the [B, H, block, S] score tensors cache-sized (on CPU the full [B, H, L, L]
        is memory-bound), and a causal block only reads the keys up to its last query, which
        skips most of the masked half of the score matrix.
        """
        K, L, S = q_BxLxHxK.shape[-1], q_BxLxHxK.shape[1], k_BxSxHxK.shape[1]
        q_BxLxHxK = q_BxLxHxK * jnp.asarray(K**-0.5, q_BxLxHxK.dtype)
        if kernel == "flash":  # [B, L, H, K] in and out: no transposed copies
            out_BxLxHxK = memory_efficient_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, causal=self.causal,
                                                     segment_ids_BxL=segment_ids_BxL)
            B, L, H, K = out_BxLxHxK.shape
            (out_BxLxD,) = project(out_BxLxHxK.reshape(B, L, H * K),
                                   self.out_HxKxD[...].astype(self.compute_dtype).reshape(H * K, -1))
            return out_BxLxD
        q_BxHxLxK = q_BxLxHxK.transpose(0, 2, 1, 3)
        k_BxHxSxK, v_BxHxSxK = k_BxSxHxK.transpose(0, 2, 1, 3), v_BxSxHxK.transpose(0, 2, 1, 3)
        outs = []
        for start in range(0, L, QUERY_BLOCK):
            stop = min(start + QUERY_BLOCK, L)
            keys = stop + S - L if self.causal else S  # causal: queries end where keys end
            mask_Bx1xQxS = None if mask_Bx1xLxS is None else mask_Bx1xLxS[:, :, start:stop, :keys]
            outs.append(attend_block(q_BxHxLxK[:, :, start:stop], k_BxHxSxK[:, :, :keys],
                                     v_BxHxSxK[:, :, :keys], mask_Bx1xQxS))
        out_BxHxLxK = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
        B, H, L, K = out_BxHxLxK.shape
        out_BxLxHK = out_BxHxLxK.transpose(0, 2, 1, 3).reshape(B, L, H * K)
        (out_BxLxD,) = project(out_BxLxHK, self.out_HxKxD[...].astype(self.compute_dtype).reshape(H * K, -1))
        return out_BxLxD

    def __call__(self, x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL=None, kernel="xla"):
        q, k, v = self.qkv(x_BxLxD, sin_LxK2, cos_LxK2)
        return self.attend(q, k, v, mask_Bx1xLxL, segment_ids_BxL, kernel)


class SwiGLU(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        D, F = cfg.d_model, cfg.d_ff
        self.compute_dtype = compute_dtype
        self.gate_DxF = _param(rngs, D**-0.5, (D, F), ("embed", "mlp"), param_dtype)
        self.up_DxF = _param(rngs, D**-0.5, (D, F), ("embed", "mlp"), param_dtype)
        self.down_FxD = _param(rngs, F**-0.5 / math.sqrt(2 * cfg.n_layers), (F, D), ("mlp", "embed"),
                               param_dtype)

    def __call__(self, x_BxLxD):
        cast = lambda w: w[...].astype(self.compute_dtype)
        gate_BxLxF, up_BxLxF = project(x_BxLxD, cast(self.gate_DxF), cast(self.up_DxF))
        h_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "act_mlp"))
        (out_BxLxD,) = project(h_BxLxF, cast(self.down_FxD))
        return out_BxLxD


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, **kw)
        self.attn = Attention(cfg, compute_dtype=compute_dtype, **kw)
        self.mlp_norm = RMSNorm(cfg.d_model, **kw)
        self.mlp = SwiGLU(cfg, compute_dtype=compute_dtype, **kw)

    def __call__(self, x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL=None, kernel="xla"):
        x_BxLxD = x_BxLxD + self.attn(self.attn_norm(x_BxLxD), sin_LxK2, cos_LxK2, mask_Bx1xLxL,
                                      segment_ids_BxL, kernel)
        x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))
        return constrain(x_BxLxD, ("batch", "length", "act_embed"))


def attention_mask(L: int, causal: bool, segment_ids_BxL: jax.Array | None) -> jax.Array | None:
    """bool [B or 1, 1, L, L]: query i may attend key j; None when everything may attend."""
    mask_1x1xLxL = jnp.tril(jnp.ones((L, L), bool))[None, None] if causal else None
    if segment_ids_BxL is None:
        return mask_1x1xLxL
    same_Bx1xLxL = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
    return same_Bx1xLxL if mask_1x1xLxL is None else same_Bx1xLxL & mask_1x1xLxL


class Transformer(nnx.Module):
    """`attention` (auto | xla | flash), `remat` (none | dots | full) and `scan_layers` change
    memory and speed, not values (models/options.py). Remat implies scanned layers."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 compute_dtype=None, attention: str = "auto", remat: str = "none", scan_layers: bool = False):
        cfg.validate()
        resolve_attention(attention, "cpu", 1)  # validates the choice
        if remat not in REMAT:
            raise ValueError(f"remat={remat!r}: choose one of {REMAT}")
        self.cfg = cfg
        self.attention, self.remat, self.scan_layers = attention, remat, bool(scan_layers)
        self.compute_dtype = jnp.dtype(compute_dtype or default_compute_dtype())
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        D, V = cfg.d_model, cfg.vocab_size
        self.embed_VxD = _param(rngs, 1.0, (V, D), ("vocab", "embed"), param_dtype)
        self.blocks = nnx.List([Block(cfg, compute_dtype=self.compute_dtype, **kw)
                                for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(D, **kw)
        self.head_DxV = _param(rngs, D**-0.5, (D, V), ("embed", "vocab"), param_dtype)

    def embed(self, inputs_BxL: jax.Array) -> jax.Array:
        # gather from a whole table: a lookup into vocab/fsdp shards makes XLA replicate activations
        table_VxD = constrain(self.embed_VxD[...], (None, None))
        x_BxLxD = jnp.take(table_VxD, inputs_BxL, axis=0).astype(self.compute_dtype)
        return constrain(x_BxLxD, ("batch", "length", "act_embed"))

    def logits(self, x_BxLxD: jax.Array) -> jax.Array:
        (logits_BxLxV,) = project(self.final_norm(x_BxLxD), self.head_DxV[...].astype(self.compute_dtype),
                                  out_dtype=jnp.float32)
        return constrain(logits_BxLxV, ("batch", "length", "act_vocab"))

    def __call__(self, inputs_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None) -> jax.Array:
        """float32 logits [B, L, V]. Position l predicts targets[l] (the caller shifts)."""
        L = inputs_BxL.shape[1]
        self.cfg.validate(seq_len=L)
        # RoPE scores depend only on i - j, so absolute window positions are right for every
        # packed subject: positions need not restart at each segment.
        sin_LxK2, cos_LxK2 = rope_tables(jnp.arange(L), self.cfg.head_dim)
        kernel = resolve_attention(self.attention, jax.default_backend(), L)
        mask_Bx1xLxL = attention_mask(L, self.cfg.causal, segment_ids_BxL) if kernel == "xla" else None
        x_BxLxD = self.embed(inputs_BxL)
        if self.remat == "none" and not self.scan_layers:
            for block in self.blocks:
                x_BxLxD = block(x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL, kernel)
        else:
            x_BxLxD = self._blocks_functional(x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL, kernel)
        return self.logits(x_BxLxD)

    def _blocks_functional(self, x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL, kernel):
        """The layers as a function of their weights: rematerialised and/or scanned.

        Every block has the same structure, so one graphdef serves all; scanning stacks the
        layers' weights on the fly, which keeps the parameter tree (and checkpoints) the same
        with and without scanning, and traces (and compiles) one layer instead of n_layers.
        """
        splits = [nnx.split(block) for block in self.blocks]
        graphdef = splits[0][0]

        def layer(state, x_BxLxD):
            block = nnx.merge(graphdef, state)
            return block(x_BxLxD, sin_LxK2, cos_LxK2, mask_Bx1xLxL, segment_ids_BxL, kernel)

        if self.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)  # scanned
        states = [nnx.to_pure_dict(state) for _, state in splits]
        # remat always scans: unrolled, XLA may schedule a layer's recomputation early (the CPU
        # compiler does), which keeps every layer's activations after all; inside a scan the
        # recomputation can only run in its own layer's backward step
        if not self.scan_layers and self.remat == "none":
            for state in states:
                x_BxLxD = layer(state, x_BxLxD)
            return x_BxLxD
        stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *states)
        x_BxLxD, _ = jax.lax.scan(lambda x, state: (layer(state, x), None), x_BxLxD, stacked)
        return x_BxLxD
