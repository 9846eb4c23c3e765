"""models/projection.py: the hand-laid-out backward pass equals autodiff of plain matmuls."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medscale.models.projection import project


def _arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def _reference(x, *ws):
    return tuple(jnp.einsum("nd,d...->n...", x, w) for w in ws)


@pytest.mark.parametrize("weight_shapes", [
    [(24, 40), (24, 40)],      # shared input, wider outputs: the input is transposed once
    [(24, 3, 8)] * 3,          # q/k/v-style [D, H, K] weights
    [(40, 24)],                # narrow output: the output gradient is transposed instead
    [(24, 24)],
])
def test_values_and_gradients_match_autodiff(weight_shapes):
    x, *ws = _arrays([(16, weight_shapes[0][0]), *weight_shapes])
    cot = _arrays([(16, *s[1:]) for s in weight_shapes], seed=1)

    def loss(fn):
        return lambda x, *ws: sum(jnp.sum(y * c) for y, c in zip(fn(x, *ws), cot))

    got = jax.jit(lambda *a: project(*a))(x, *ws)
    want = _reference(x, *ws)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    argnums = tuple(range(len(ws) + 1))
    g_got = jax.jit(jax.grad(loss(project), argnums))(x, *ws)
    g_want = jax.jit(jax.grad(loss(_reference), argnums))(x, *ws)
    for g, w in zip(g_got, g_want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_out_dtype_accumulates_in_float32_from_bfloat16():
    x, w = (a.astype(jnp.bfloat16) for a in _arrays([(8, 16), (16, 32)]))
    (y,) = project(x, w, out_dtype=jnp.float32)
    assert y.dtype == jnp.float32
    dx, dw = jax.grad(lambda x, w: jnp.sum(project(x, w, out_dtype=jnp.float32)[0] ** 2),
                      (0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    ref_dw = jax.grad(lambda w: jnp.sum((x.astype(jnp.float32) @ w.astype(jnp.float32)) ** 2))(w)
    np.testing.assert_allclose(np.asarray(dw, np.float32), ref_dw, rtol=3e-2, atol=3e-1)
