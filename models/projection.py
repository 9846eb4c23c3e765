"""x @ W for one or more weights sharing an input, with a backward pass laid out for XLA's CPU.

Plain autodiff leaves XLA's CPU backend to choose how to form each weight gradient
dW = x^T @ dy, and it often materialises the transposed *output* gradient dy^T (for the MLP a
[d_ff, tokens] tensor) inside a strided elementwise fusion, or falls back to a slow
transposed-operand dot; either costs as much as the matmul itself. Here the backward pass
transposes the smaller of the shared input x (once, for all weights) and dy, so every matmul
is a plain row-major product. On CPU the transpose sits behind an optimization barrier so that
XLA cannot fold it back into the dot. The values are those of autodiff (tests/test_models_*).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def project(x: jax.Array, *weights: jax.Array, out_dtype=None) -> tuple[jax.Array, ...]:
    """(x @ w for w in weights): x is [..., D], each w is [D, ...], each result [..., w.shape[1:]].

    `out_dtype` (e.g. float32 logits from bfloat16 operands) is the matmul's accumulation and
    result type; by default the operands' type.
    """
    lead = x.shape[:-1]
    outs = _project(None if out_dtype is None else jnp.dtype(out_dtype),
                    x.reshape(-1, x.shape[-1]), *weights)
    return tuple(y.reshape(lead + y.shape[1:]) for y in outs)


def materialised_transpose(a: jax.Array) -> jax.Array:
    """`a` with its last two axes swapped; on CPU, kept from being folded back into a dot."""
    a_T = jnp.swapaxes(a, -1, -2)
    return jax.lax.optimization_barrier(a_T) if jax.default_backend() == "cpu" else a_T


def _matmul(a, b, out_dtype):
    return jnp.matmul(a, b, preferred_element_type=out_dtype)


def _flat(w):
    return w.reshape(w.shape[0], -1)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _project(out_dtype, x_NxD, *weights):
    return tuple(_matmul(x_NxD, _flat(w), out_dtype).reshape(x_NxD.shape[:1] + w.shape[1:])
                 for w in weights)


def _fwd(out_dtype, x_NxD, *weights):
    return _project(out_dtype, x_NxD, *weights), (x_NxD, weights)


def _bwd(out_dtype, res, dys):
    x_NxD, weights = res
    N, D = x_NxD.shape
    dys_NxE = [dy.reshape(N, -1) for dy in dys]
    ws_DxE = [_flat(w) for w in weights]
    dx_NxD = sum(_matmul(dy.astype(x_NxD.dtype), w.T, jnp.float32)
                 for dy, w in zip(dys_NxE, ws_DxE)).astype(x_NxD.dtype)
    if D <= sum(dy.shape[1] for dy in dys_NxE):  # transpose the input once, for every weight
        x_DxN = materialised_transpose(x_NxD)
        dws = [_matmul(x_DxN, dy.astype(x_NxD.dtype), jnp.float32) for dy in dys_NxE]
    else:  # one weight with a narrow output: dW^T = dy^T x, and transpose the small result
        dws = [materialised_transpose(
                   _matmul(materialised_transpose(dy.astype(x_NxD.dtype)), x_NxD, jnp.float32))
               for dy in dys_NxE]
    return (dx_NxD, *(dw.reshape(w.shape).astype(w.dtype) for dw, w in zip(dws, weights)))


_project.defvjp(_fwd, _bwd)
