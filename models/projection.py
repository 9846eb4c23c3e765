"""x @ W for several weights sharing one input, with a backward pass that transposes x once.

Autodiff computes each weight gradient dW = x^T @ dy on its own, and XLA's CPU backend
then tends to materialise the transposed *output* gradient dy^T (often the larger tensor,
e.g. [d_ff, tokens]) inside a strided elementwise fusion, which costs as much as the matmul.
Here the backward transposes the shared input once and contracts it with each dy as is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

BARRIER = True


def _flat(x_NxD, w):
    return jnp.einsum("nd,de->ne", x_NxD, w.reshape(w.shape[0], -1)).reshape(
        x_NxD.shape[:1] + w.shape[1:])


@jax.custom_vjp
def project(x_NxD: jax.Array, *weights: jax.Array) -> tuple[jax.Array, ...]:
    """(x @ w for w in weights); x is [N, D] and each w is [D, ...]."""
    return tuple(_flat(x_NxD, w) for w in weights)


def _fwd(x_NxD, *weights):
    return project(x_NxD, *weights), (x_NxD, weights)


def _bwd(res, dys):
    x_NxD, weights = res
    xT_DxN = x_NxD.T
    if BARRIER:
        xT_DxN = jax.lax.optimization_barrier(xT_DxN)
    dx_NxD = None
    dws = []
    for w, dy in zip(weights, dys):
        dy_NxE = dy.reshape(dy.shape[0], -1)
        w_DxE = w.reshape(w.shape[0], -1)
        term = jnp.einsum("ne,de->nd", dy_NxE, w_DxE)
        dx_NxD = term if dx_NxD is None else dx_NxD + term
        dws.append(jnp.einsum("dn,ne->de", xT_DxN, dy_NxE).reshape(w.shape))
    return (dx_NxD, *dws)


project.defvjp(_fwd, _bwd)
