"""Softmax attention over one block of queries, with a backward pass laid out for XLA's CPU.

Autodiff of the two batched matmuls leaves XLA's CPU backend with transposed-operand dots in
the backward pass, which it runs through a slow generic kernel. Here every matmul of the
backward pass is a plain batched [M, K] x [K, N] product; the transposes it needs (of the
probabilities, the score gradient, V and K) are materialised once. Values equal autodiff's
(tests/test_models_attention_block.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from medscale.models.projection import materialised_transpose


def _probs(q_BxHxQxK, k_BxHxSxK, mask_Bx1xQxS):
    logits_BxHxQxS = jnp.matmul(q_BxHxQxK, materialised_transpose(k_BxHxSxK), preferred_element_type=jnp.float32)
    if mask_Bx1xQxS is not None:
        logits_BxHxQxS = jnp.where(mask_Bx1xQxS, logits_BxHxQxS, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits_BxHxQxS, axis=-1)


@jax.custom_vjp
def attend_block(q_BxHxQxK, k_BxHxSxK, v_BxHxSxK, mask_Bx1xQxS):
    """softmax(q k^T, masked) v: [B, H, Q, K] in v's dtype; softmax in float32.

    q is already scaled; `mask` is bool [B or 1, 1, Q, S] (True: may attend) or None.
    """
    probs_BxHxQxS = _probs(q_BxHxQxK, k_BxHxSxK, mask_Bx1xQxS)
    return jnp.matmul(probs_BxHxQxS.astype(v_BxHxSxK.dtype), v_BxHxSxK)


def _fwd(q, k, v, mask):
    probs = _probs(q, k, mask)
    return jnp.matmul(probs.astype(v.dtype), v), (q, k, v, mask, probs)


def _bwd(res, dout_BxHxQxK):
    q, k, v, mask, probs_BxHxQxS = res
    dout = dout_BxHxQxK.astype(v.dtype)
    dv_BxHxSxK = jnp.matmul(materialised_transpose(probs_BxHxQxS.astype(v.dtype)), dout)
    dprobs_BxHxQxS = jnp.matmul(dout, materialised_transpose(v), preferred_element_type=jnp.float32)
    # softmax backward; masked positions have probability 0 and so get no gradient
    dlogits = probs_BxHxQxS * (dprobs_BxHxQxS - jnp.sum(dprobs_BxHxQxS * probs_BxHxQxS, axis=-1,
                                                        keepdims=True))
    dlogits = dlogits.astype(q.dtype)
    dq_BxHxQxK = jnp.matmul(dlogits, k)
    dk_BxHxSxK = jnp.matmul(materialised_transpose(dlogits), q)
    return dq_BxHxQxK, dk_BxHxSxK, dv_BxHxSxK.astype(v.dtype), None


attend_block.defvjp(_fwd, _bwd)
