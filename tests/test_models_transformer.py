import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medscale.models.config import ModelConfig
from medscale.models.transformer import Transformer

V, L = 40, 12


@functools.cache
def model(causal: bool, compute_dtype=jnp.float32):
    """The model's forward, jitted (eager op-by-op dispatch would dominate the test time)."""
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16,
                      causal=causal)
    graphdef, params = nnx.split(nnx.eval_shape(
        lambda: Transformer(cfg, rngs=nnx.Rngs(1), compute_dtype=compute_dtype)))
    params = jax.jit(lambda: nnx.state(Transformer(cfg, rngs=nnx.Rngs(1),
                                                   compute_dtype=compute_dtype)))()
    forward = jax.jit(lambda p, x, seg: nnx.merge(graphdef, p)(x, seg))
    return lambda x, seg=None: forward(params, x, seg)


def tokens(seed=0, batch=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, L)), jnp.int32)


def changed_at(x, pos):
    return x.at[:, pos].set((x[:, pos] + 1) % V)


def test_logits_shape_and_dtype():
    logits = model(True)(tokens())
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_decoder_is_causal():
    m, x, pos = model(True), tokens(), 7
    diff = jnp.abs(m(x) - m(changed_at(x, pos))).max(axis=(0, 2))
    assert float(diff[:pos].max()) == 0.0  # earlier positions cannot see the future
    assert float(diff[pos:].min()) > 1e-4  # the changed position and later ones do


def test_encoder_is_bidirectional():
    m, x, pos = model(False), tokens(), 7
    diff = jnp.abs(m(x) - m(changed_at(x, pos))).max(axis=(0, 2))
    assert float(diff.min()) > 1e-4  # every position sees the change


@pytest.mark.parametrize("causal", [True, False])
def test_segments_do_not_see_each_other(causal):
    m, x = model(causal), tokens()
    seg = jnp.asarray([[0] * 5 + [1] * 7] * 2, jnp.int32)
    base = m(x, seg)
    # change subject 0's tokens: subject 1's logits stay, subject 0's move
    diff = jnp.abs(base - m(changed_at(x, 2), seg)).max(axis=(0, 2))
    assert float(diff[5:].max()) == 0.0 and float(diff[2:5].min()) > 1e-4
    # change subject 1's last token: subject 0 unaffected (in the encoder too)
    diff = jnp.abs(base - m(changed_at(x, L - 1), seg)).max(axis=(0, 2))
    assert float(diff[:5].max()) == 0.0
    if not causal:
        assert float(diff[5:].min()) > 1e-4
    # a packed subject gets the same logits as alone in its own window (RoPE is relative)
    alone = m(x[:, 5:])
    np.testing.assert_allclose(base[:, 5:], alone, atol=1e-4)
    # without segment ids, the subjects do interact
    assert float(jnp.abs(m(x)[:, 5:] - base[:, 5:]).max()) > 1e-4


def test_bf16_compute_close_to_f32():
    x = tokens()
    f32 = model(True)(x)
    bf16 = model(True, compute_dtype=jnp.bfloat16)(x)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.15)
    assert float(jnp.abs(bf16 - f32).max()) > 0  # it did compute in lower precision


@pytest.mark.parametrize("causal", [True, False])
def test_query_blocks_give_the_same_logits(causal, monkeypatch):
    import medscale.models.transformer as transformer

    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16,
                      causal=causal)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(2)))
    x, seg = tokens(), jnp.asarray([[0] * 3 + [1] * 9] * 2, jnp.int32)

    def forward():  # a fresh jit, so QUERY_BLOCK is read again at trace time
        return jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s))(params, x, seg)

    whole = forward()
    monkeypatch.setattr(transformer, "QUERY_BLOCK", 5)  # blocks of 5, 5, 2 queries
    np.testing.assert_allclose(forward(), whole, atol=1e-5)
