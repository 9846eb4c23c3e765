"""Blocked softmax attention that keeps O(L) residuals: an online softmax over key blocks in the
forward pass, and recomputation of each score block in the backward pass (FlashAttention-2's
algorithm, written in plain JAX so that it runs, and is tested, on every backend).

The plain path (models/transformer.py `Attention.attend` over models/attention_block.py) keeps
the float32 probabilities of every layer, [B, H, L, L], for the backward pass: at 1,024 events
that is most of a large model's training memory. Here the forward pass stores only the output
and the per-row logsumexp [B, H, L]; the backward pass recomputes each [Q, S] block of
probabilities from it. Masks are never materialised either: the causal rule, the packed
subjects' segment ids and the padding of the last block are applied per block.

Shapes: q [B, L, H, K] (already scaled), k and v [B, S, H, K], the layout the projections give
and take, so no transposed copies are made or kept; segment ids [B, L] (or None); `causal`
requires L == S (self-attention). Values and gradients equal the plain implementation's
(tests/test_models_attention_flash.py).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

BLOCK = 128  # queries and keys per block: [B, H, 128, 128] float32 score blocks
_NEG = -1e30  # finite "minus infinity": rows whose keys are all masked stay NaN-free


def _pad_to(x: jax.Array, axis: int, n: int, value=0) -> jax.Array:
    extra = n - x.shape[axis]
    if extra == 0:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad, constant_values=value)


def _block_mask(qpos_Q, kpos_S, qseg_BxQ, kseg_BxS, n_keys: int, causal: bool):
    """bool [B or 1, 1, Q, S]: real keys, the causal rule, the same subject."""
    mask_QxS = (kpos_S < n_keys)[None, :]
    if causal:
        mask_QxS = mask_QxS & (kpos_S[None, :] <= qpos_Q[:, None])
    mask = mask_QxS[None, None]
    if qseg_BxQ is not None:
        mask = mask & (qseg_BxQ[:, :, None] == kseg_BxS[:, None, :])[:, None]
    return mask


def _layout(q, k, v, q_seg, k_seg, bq: int, bk: int):
    """Pad L and S to whole blocks; padded segment ids (-2 for queries, -1 for keys) never match."""
    L, S = q.shape[1], k.shape[1]
    Lp, Sp = -(-L // bq) * bq, -(-S // bk) * bk
    q, k, v = _pad_to(q, 1, Lp), _pad_to(k, 1, Sp), _pad_to(v, 1, Sp)
    if q_seg is not None:
        q_seg, k_seg = _pad_to(q_seg, 1, Lp, -2), _pad_to(k_seg, 1, Sp, -1)
    return q, k, v, q_seg, k_seg


def _key_blocks_for(i, bq: int, bk: int, n_kb: int, causal: bool):
    """How many key blocks query block i reads: causal blocks stop at the diagonal."""
    if not causal:
        return n_kb
    return jnp.minimum(n_kb, ((i + 1) * bq + bk - 1) // bk)


def _forward(q, k, v, q_seg, k_seg, causal: bool, bq: int, bk: int):
    """(out [B, L, H, K] in v's dtype, logsumexp [B, H, L] float32)."""
    B, L, H, K = q.shape
    S = k.shape[1]
    q, k, v, q_seg, k_seg = _layout(q, k, v, q_seg, k_seg, bq, bk)
    n_qb, n_kb = q.shape[1] // bq, k.shape[1] // bk

    def one_query_block(i):
        q_i = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
        qseg_i = None if q_seg is None else jax.lax.dynamic_slice_in_dim(q_seg, i * bq, bq, axis=1)
        qpos = i * bq + jnp.arange(bq)

        def over_keys(j, carry):
            m_i, l_i, acc = carry
            k_j = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
            v_j = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
            kseg_j = None if k_seg is None else jax.lax.dynamic_slice_in_dim(k_seg, j * bk, bk, axis=1)
            mask = _block_mask(qpos, j * bk + jnp.arange(bk), qseg_i, kseg_j, S, causal)
            s = jnp.einsum("bqhk,bshk->bhqs", q_i, k_j, preferred_element_type=jnp.float32)
            s = jnp.where(mask, s, _NEG)
            m_new = jnp.maximum(m_i, jnp.max(s, axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m_i - m_new)
            l_new = l_i * corr + jnp.sum(p, axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("bhqs,bshk->bhqk", p.astype(v.dtype), v_j,
                                                     preferred_element_type=jnp.float32)
            return m_new, l_new, acc

        init = (jnp.full((B, H, bq), _NEG, jnp.float32), jnp.zeros((B, H, bq), jnp.float32),
                jnp.zeros((B, H, bq, K), jnp.float32))
        m_i, l_i, acc = jax.lax.fori_loop(0, _key_blocks_for(i, bq, bk, n_kb, causal), over_keys, init)
        safe_l = jnp.where(l_i > 0, l_i, 1.0)
        lse = jnp.where(l_i > 0, m_i + jnp.log(safe_l), 0.0)
        return (acc / safe_l[..., None]).astype(v.dtype).transpose(0, 2, 1, 3), lse

    out_N, lse_N = jax.lax.map(one_query_block, jnp.arange(n_qb))  # [n_qb, B, bq, H, K], [n_qb, B, H, bq]
    out = jnp.moveaxis(out_N, 0, 1).reshape(B, n_qb * bq, H, K)[:, :L]
    lse = jnp.moveaxis(lse_N, 0, 2).reshape(B, H, n_qb * bq)[:, :, :L]
    return out, lse


def _backward(q, k, v, q_seg, k_seg, out, lse, dout, causal: bool, bq: int, bk: int):
    """(dq, dk, dv): key blocks outside, the query blocks that see each one inside."""
    B, L, H, K = q.shape
    S = k.shape[1]
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)  # [B, H, L]
    q, k, v, q_seg, k_seg = _layout(q, k, v, q_seg, k_seg, bq, bk)
    Lp = q.shape[1]
    n_qb, n_kb = Lp // bq, k.shape[1] // bk
    dout = _pad_to(dout.astype(v.dtype), 1, Lp)
    lse, delta = _pad_to(lse, 2, Lp), _pad_to(delta, 2, Lp)

    def one_key_block(j, acc):
        dq_acc, dk_acc, dv_acc = acc
        k_j = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
        v_j = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
        kseg_j = None if k_seg is None else jax.lax.dynamic_slice_in_dim(k_seg, j * bk, bk, axis=1)
        kpos = j * bk + jnp.arange(bk)

        def over_queries(i, carry):
            dq_acc, dk_j, dv_j = carry
            sl = lambda x, axis=1: jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=axis)  # noqa: E731
            q_i, do_i, lse_i, delta_i = sl(q), sl(dout), sl(lse, 2), sl(delta, 2)
            qseg_i = None if q_seg is None else sl(q_seg)
            mask = _block_mask(i * bq + jnp.arange(bq), kpos, qseg_i, kseg_j, S, causal)
            s = jnp.einsum("bqhk,bshk->bhqs", q_i, k_j, preferred_element_type=jnp.float32)
            p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
            dv_j = dv_j + jnp.einsum("bhqs,bqhk->bshk", p.astype(v.dtype), do_i,
                                     preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhk,bshk->bhqs", do_i, v_j, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
            dk_j = dk_j + jnp.einsum("bhqs,bqhk->bshk", ds, q_i, preferred_element_type=jnp.float32)
            dq_i = sl(dq_acc) + jnp.einsum("bhqs,bshk->bqhk", ds, k_j, preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(dq_acc, dq_i, i * bq, axis=1), dk_j, dv_j

        # causal: the first query block that sees key block j is the one holding query j * bk
        first = (j * bk) // bq if causal else 0
        block_zeros = full_zeros(bk)
        dq_acc, dk_j, dv_j = jax.lax.fori_loop(first, n_qb, over_queries, (dq_acc, block_zeros, block_zeros))
        return (dq_acc, jax.lax.dynamic_update_slice_in_dim(dk_acc, dk_j, j * bk, axis=1),
                jax.lax.dynamic_update_slice_in_dim(dv_acc, dv_j, j * bk, axis=1))

    # The accumulators start from zeros computed from dout, not a constant: XLA's CPU scheduler
    # materialises constant-initialised loop buffers at the start of the step, which kept three
    # float32 [B, L, H, K] buffers per layer alive through the whole forward pass. Each row and head
    # takes its zero from its own slice of dout, so a sharded batch or head axis stays local.
    d_Bx1xHx1 = dout[:, :1, :, :1].astype(jnp.float32)
    zero_Bx1xHx1 = jnp.where(jnp.isfinite(d_Bx1xHx1), d_Bx1xHx1, 0.0) * 0
    full_zeros = lambda n: jnp.broadcast_to(zero_Bx1xHx1, (B, n, H, K))  # noqa: E731
    dq, dk, dv = jax.lax.fori_loop(0, n_kb, one_key_block, (full_zeros(Lp), full_zeros(n_kb * bk), full_zeros(n_kb * bk)))
    dk, dv = dk[:, :S], dv[:, :S]
    return dq[:, :L].astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, q_seg, k_seg, causal, bq, bk):
    return _forward(q, k, v, q_seg, k_seg, causal, bq, bk)[0]


def _flash_fwd(q, k, v, q_seg, k_seg, causal, bq, bk):
    out, lse = _forward(q, k, v, q_seg, k_seg, causal, bq, bk)
    return out, (q, k, v, q_seg, k_seg, out, lse)


def _flash_bwd(causal, bq, bk, res, dout):
    q, k, v, q_seg, k_seg, out, lse = res
    dq, dk, dv = _backward(q, k, v, q_seg, k_seg, out, lse, dout, causal, bq, bk)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array, *,
                    causal: bool, segment_ids_BxL: jax.Array | None = None,
                    block_q: int = BLOCK, block_k: int = BLOCK) -> jax.Array:
    """softmax(q k^T, masked) v: [B, L, H, K] in v's dtype, softmax in float32; q already scaled.

    `segment_ids_BxL` (self-attention only) keeps packed subjects apart; None: one subject.
    """
    L, S = q_BxLxHxK.shape[1], k_BxSxHxK.shape[1]
    if causal and L != S:
        raise ValueError(f"causal flash attention needs as many queries as keys, got {L} and {S}")
    bq, bk = min(block_q, L), min(block_k, S)
    seg = None if segment_ids_BxL is None else segment_ids_BxL.astype(jnp.int32)
    return _flash(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, seg, seg, causal, bq, bk)
