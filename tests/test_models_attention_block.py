"""models/attention_block.py: the hand-laid-out backward pass equals autodiff of plain attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medscale.models.attention_block import attend_block


def _reference(q, k, v, mask):
    logits = jnp.einsum("bhqk,bhsk->bhqs", q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqs,bhsk->bhqk", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_match_autodiff(masked):
    rng = np.random.default_rng(0)
    B, H, Q, S, K = 2, 3, 4, 6, 8
    q, k, v, cot = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                    for s in [(B, H, Q, K), (B, H, S, K), (B, H, S, K), (B, H, Q, K)])
    # causal-style mask with a segment boundary, so some rows see only part of the keys
    mask = None
    if masked:
        causal = np.tril(np.ones((Q, S), bool), k=S - Q)
        segments = np.arange(S) >= 3
        mask = jnp.asarray((causal & (segments[None, :] == segments[S - Q:, None]))[None, None]
                           .repeat(B, 0))
    out = jax.jit(attend_block)(q, k, v, mask)
    np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cot)

    got = jax.jit(jax.grad(loss(attend_block), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(_reference), (0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if masked:  # keys a query may not see get nothing from it
        only_q0 = jax.grad(lambda k: jnp.sum(attend_block(q, k, v, mask)[:, :, 0]))(k)
        hidden = ~np.asarray(mask[0, 0, 0])
        assert np.all(np.asarray(only_q0)[:, :, hidden] == 0)
