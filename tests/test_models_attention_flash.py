"""models/flash_attention.py and the model options: values and gradients equal the plain path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medscale.models.attention_impl import resolve_attention
from medscale.models.config import ModelConfig
from medscale.models.flash_attention import flash_attention
from medscale.models.transformer import Transformer, attention_mask


def _plain(q, k, v, causal, seg):
    logits = jnp.einsum("bhqk,bhsk->bhqs", q, k)
    mask = attention_mask(q.shape[2], causal, seg)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqs,bhsk->bhqk", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("causal, segments", [(True, True), (False, True), (True, False)])
def test_flash_values_and_gradients_equal_plain_attention(causal, segments):
    rng = np.random.default_rng(0)
    B, H, L, K = 2, 3, 37, 8  # 37: blocks of 8 and 16 leave ragged last blocks
    q, k, v, cot = (jnp.asarray(rng.standard_normal((B, H, L, K)), jnp.float32) for _ in range(4))
    # packed subjects: three segments in row 0, two in row 1
    seg = jnp.asarray(np.stack([np.repeat([0, 1, 2], [10, 15, 12]), np.repeat([3, 4], [30, 7])])) if segments else None

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    blhk = lambda t: t.transpose(0, 2, 1, 3)  # noqa: E731  (flash takes and gives [B, L, H, K])
    flash = lambda q, k, v: blhk(flash_attention(blhk(q), blhk(k), blhk(v), causal=causal, segment_ids_BxL=seg,  # noqa: E731
                                                 block_q=8, block_k=16))
    plain = lambda q, k, v: _plain(q, k, v, causal, seg)  # noqa: E731
    np.testing.assert_allclose(jax.jit(flash)(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(loss(flash), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(plain), (0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_flash_backward_keeps_no_score_matrix():
    """The residuals of the flash forward are O(L): nothing [.., L, L] survives to the backward pass."""
    B, L, H, K = 1, 256, 2, 8
    q = jnp.ones((B, L, H, K))
    _, vjp = jax.vjp(lambda q: flash_attention(q, q, q, causal=True, block_q=64, block_k=64), q)
    shapes = [x.shape for x in jax.tree.leaves(vjp)]
    assert shapes and all(s.count(L) <= 1 for s in shapes), shapes


def test_each_layer_of_flash_keeps_only_its_inputs_and_output_for_the_backward_pass():
    """Compiled memory of a stack of flash layers grows per layer by what its backward pass needs
    (q, k, v, the output, the logsumexp, the layer input: XLA may fuse some of them away), and no
    buffer of the backward pass (its float32 accumulators) is held from the start of the step.
    XLA's CPU scheduler once materialised constant-initialised loop buffers early: three more
    [B, L, H, K] float32 buffers per layer (7.0 tensors per layer then, 4.0 now)."""
    B, L, H, K = 2, 512, 2, 32
    one_tensor = B * L * H * K * 4

    def planned_temporaries(layers: int) -> int:
        def loss(x, w):
            for i in range(layers):
                q, k, v = (jnp.tanh(x * w[i, j]) for j in range(3))
                x = x + flash_attention(q, k, v, causal=True)
            return jnp.sum(x**2)

        x, w = jax.ShapeDtypeStruct((B, L, H, K), jnp.float32), jax.ShapeDtypeStruct((layers, 3), jnp.float32)
        return jax.jit(jax.grad(loss)).lower(x, w).compile().memory_analysis().temp_size_in_bytes

    per_layer = (planned_temporaries(4) - planned_temporaries(2)) / 2 / one_tensor
    assert per_layer <= 6.0, f"each flash layer keeps {per_layer:.2f} [B, L, H, K] float32 tensors"


def _model_loss(cfg, **options):
    model = Transformer(cfg, rngs=nnx.Rngs(3), compute_dtype=jnp.float32, **options)
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(1)
    inputs = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 24)), jnp.int32)
    seg = jnp.asarray(np.repeat([[0, 1], [2, 3]], [14, 10], axis=1), jnp.int32)

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(inputs, seg) ** 2)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("causal", [True, False])
def test_model_options_keep_values_and_gradients(causal):
    """Decoder and encoder: flash attention, remat and scanned layers change memory, not results."""
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=32, causal=causal)
    want_loss, want_grads = _model_loss(cfg, attention="xla")
    variants = ({"attention": "flash", "remat": "full"}, {"attention": "xla", "remat": "dots"}) if causal else \
        ({"attention": "flash"}, {"attention": "xla", "scan_layers": True})
    for options in variants:
        loss, grads = _model_loss(cfg, **options)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=str(options))
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=str(options)),
                     grads, want_grads)


def test_auto_picks_per_backend_and_length():
    assert resolve_attention("auto", "cpu", 1024) == "xla"  # the fast CPU path stays where it is faster
    assert resolve_attention("auto", "cpu", 8192) == "flash"
    assert resolve_attention("auto", "gpu", 128) == "flash"
    assert resolve_attention("xla", "tpu", 128) == "xla"
    with pytest.raises(ValueError, match="attention"):
        resolve_attention("fast", "cpu", 8)
