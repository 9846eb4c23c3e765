"""Sampling continuations from a decoder with a KV cache, and the final hidden states of a history.

`sample_continuations(model, prompts_BxP, lengths_B, k=K, max_new=T, key=...)` draws K continuations of
T tokens per prompt at temperature `temperature` (1 = the model's own distribution): prompts are
left-aligned histories (PAD after `lengths`); each prompt is run once (prefill, writing each layer's
keys/values into a cache of P + T positions), its cache is repeated for its K continuations, and then one
token per step reads the cache (`jax.lax.scan`), so a step costs O(P + T) instead of re-running the prefix.
`sample_until` does the same in chunks of tokens and stops as soon as a caller's test says every
trajectory is finished (zero-shot: every label window has closed), which is how rollouts run until the
window closes without paying for the longest possible horizon on every batch. Pad
positions never serve as keys; new tokens are written right after each row's own prompt, so rows of
different lengths decode in the same batch. Never-sampled ids (`banned`, e.g. PAD/BOS/MASK) get zero
probability. Returns int32 [B, K, T].

It reuses the modules of models/transformer.py (embedding, each block's norms, q/k/v projections with
rotary embeddings, `attend`, SwiGLU, output head), so the cached forward computes what
`Transformer.__call__` computes (tests/test_downstream_rollout.py checks the logits against it).

`hidden_states(model, tokens_BxL, lengths_B)` is the final-norm output [B, L, D] (float32) of the
histories, the representation downstream probes read.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from medscale.models.transformer import Transformer, rope_tables


def _valid_mask(lengths_B: jax.Array, L: int) -> jax.Array:
    return jnp.arange(L)[None, :] < lengths_B[:, None]


def hidden_states(model: Transformer, tokens_BxL: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """float32 [B, L, D] after the final norm; pad positions are separate segments (never attended to)."""
    L = tokens_BxL.shape[1]
    segment_ids_BxL = jnp.where(_valid_mask(lengths_B, L), 1, 0).astype(jnp.int32)
    sin, cos = rope_tables(jnp.arange(L), model.cfg.head_dim)
    mask_Bx1xLxL = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
    if model.cfg.causal:
        mask_Bx1xLxL = mask_Bx1xLxL & jnp.tril(jnp.ones((L, L), bool))[None, None]
    x_BxLxD = model.embed(tokens_BxL)
    for block in model.blocks:
        x_BxLxD = block(x_BxLxD, sin, cos, mask_Bx1xLxL)
    return model.final_norm(x_BxLxD).astype(jnp.float32)


def pooled(model: Transformer, tokens_BxL: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """[B, D]: the last real position for a decoder (causal: it has read the whole history), the mean
    over real positions for an encoder."""
    h_BxLxD = hidden_states(model, tokens_BxL, lengths_B)
    if model.cfg.causal:
        return h_BxLxD[jnp.arange(h_BxLxD.shape[0]), lengths_B - 1]
    valid_BxL = _valid_mask(lengths_B, tokens_BxL.shape[1]).astype(jnp.float32)
    return (h_BxLxD * valid_BxL[..., None]).sum(1) / jnp.maximum(valid_BxL.sum(1, keepdims=True), 1.0)


def _prefill(model: Transformer, prompts_BxP, lengths_B, total: int):
    """Run the prompts; returns (logits at each row's last prompt token [B, V], per-layer tuples of the key
    and value caches [B, H, total, K]: heads before positions, the layout one query per row reads without a
    transpose)."""
    B, P = prompts_BxP.shape
    sin, cos = rope_tables(jnp.arange(P), model.cfg.head_dim)
    valid_BxP = _valid_mask(lengths_B, P)
    mask = (valid_BxP[:, None, :] & jnp.tril(jnp.ones((P, P), bool))[None])[:, None]
    x_BxPxD = model.embed(prompts_BxP)
    ks, vs = [], []
    for block in model.blocks:
        q, k, v = block.attn.qkv(block.attn_norm(x_BxPxD), sin, cos)
        x_BxPxD = x_BxPxD + block.attn.attend(q, k, v, mask)
        x_BxPxD = x_BxPxD + block.mlp(block.mlp_norm(x_BxPxD))
        pad = ((0, 0), (0, 0), (0, total - P), (0, 0))
        ks.append(jnp.pad(k.transpose(0, 2, 1, 3), pad))
        vs.append(jnp.pad(v.transpose(0, 2, 1, 3), pad))
    last_BxD = x_BxPxD[jnp.arange(B), lengths_B - 1][:, None]
    return model.logits(last_BxD)[:, 0], tuple(ks), tuple(vs)


def _decode_step(model: Transformer, token_B, pos_B, k_caches, v_caches):
    """One new token per row at position pos_B: returns (logits [B, V], updated cache tuples).

    The caches are separate per layer (a while loop updates each in place; a stacked array would be copied
    every step) and attention for the single query is two einsums over the [B, H, S, K] cache."""
    B, S = token_B.shape[0], k_caches[0].shape[2]
    sin_all, cos_all = rope_tables(jnp.arange(S), model.cfg.head_dim)
    sin_B, cos_B = sin_all[pos_B], cos_all[pos_B]  # [B, K/2]
    visible_Bx1xS = (jnp.arange(S)[None, :] <= pos_B[:, None])[:, None, :]
    x_Bx1xD = model.embed(token_B[:, None])
    rows = jnp.arange(B)
    new_k, new_v = [], []
    for i, block in enumerate(model.blocks):
        h = block.attn_norm(x_Bx1xD)
        cd = block.attn.compute_dtype
        q, k, v = (jnp.einsum("bld,dhk->blhk", h, w[...].astype(cd))
                   for w in (block.attn.q_DxHxK, block.attn.k_DxHxK, block.attn.v_DxHxK))
        q, k = (_rope_rows(t, sin_B, cos_B) for t in (q, k))
        kc = k_caches[i].at[rows, :, pos_B].set(k[:, 0])
        vc = v_caches[i].at[rows, :, pos_B].set(v[:, 0])
        q_BxHxK = q[:, 0] * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
        scores_BxHxS = jnp.einsum("bhk,bhsk->bhs", q_BxHxK, kc, preferred_element_type=jnp.float32)
        probs_BxHxS = jax.nn.softmax(jnp.where(visible_Bx1xS, scores_BxHxS, -jnp.inf), axis=-1)
        o_BxHxK = jnp.einsum("bhs,bhsk->bhk", probs_BxHxS.astype(vc.dtype), vc)
        x_Bx1xD = x_Bx1xD + jnp.einsum("bhk,hkd->bd", o_BxHxK, block.attn.out_HxKxD[...].astype(cd))[:, None]
        x_Bx1xD = x_Bx1xD + block.mlp(block.mlp_norm(x_Bx1xD))
        new_k.append(kc)
        new_v.append(vc)
    return model.logits(x_Bx1xD)[:, 0], tuple(new_k), tuple(new_v)


def _rope_rows(x_Bx1xHxK, sin_BxK2, cos_BxK2):
    x1, x2 = jnp.split(x_Bx1xHxK.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_BxK2[:, None, None, :], cos_BxK2[:, None, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_Bx1xHxK.dtype)


def _draw(logits_BxV, key, banned_V, temperature):
    """One token per row from softmax(logits / temperature) by inverting its CDF with one uniform per row
    (jax.random.categorical draws a Gumbel per vocabulary entry: V random numbers per row and step, which
    dominated a step's time on CPU)."""
    logits_BxV = jnp.where(banned_V[None, :], -jnp.inf, logits_BxV / temperature)
    cdf_BxV = jnp.cumsum(jax.nn.softmax(logits_BxV, axis=-1), axis=-1)
    u_Bx1 = jax.random.uniform(key, (logits_BxV.shape[0], 1)) * cdf_BxV[:, -1:]
    token_B = jnp.sum(cdf_BxV <= u_Bx1, axis=-1)
    # never past the last allowed id, whatever the rounding of the last few cumulative sums
    last_allowed = logits_BxV.shape[-1] - 1 - jnp.argmax(~banned_V[::-1])
    return jnp.minimum(token_B, last_allowed).astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "k", "total"))
def _prefill_jit(graphdef, params, prompts_BxP, lengths_B, *, k: int, total: int):
    """Each prompt is run once and its cache repeated for its k continuations (rows b*k .. b*k+k-1)."""
    model = nnx.merge(graphdef, params)
    logits_BxV, k_cache, v_cache = _prefill(model, prompts_BxP, lengths_B, total)
    rep = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731
    return (rep(logits_BxV), tuple(map(rep, k_cache)), tuple(map(rep, v_cache)), rep(lengths_B))


@partial(jax.jit, static_argnames=("graphdef", "steps", "temperature"), donate_argnums=(2,))
def _decode_chunk_jit(graphdef, params, carry, key, banned_V, *, steps: int, temperature: float):
    """`steps` sampled tokens per row from the carried state (logits, caches, positions): (carry, [R, steps])."""
    model = nnx.merge(graphdef, params)

    def step(carry, key):
        logits_BxV, k_cache, v_cache, pos_B = carry
        token_B = _draw(logits_BxV, key, banned_V, temperature)
        logits_BxV, k_cache, v_cache = _decode_step(model, token_B, pos_B, k_cache, v_cache)
        return (logits_BxV, k_cache, v_cache, pos_B + 1), token_B

    carry, tokens_TxB = jax.lax.scan(step, carry, jax.random.split(key, steps))
    return carry, tokens_TxB.T


def sample_until(graphdef, params, prompts_BxP, lengths_B, *, k: int, max_new: int, key, banned=(),
                 temperature: float = 1.0, chunk: int = 32, finished=None, max_len: int | None = None,
                 recontext=None):
    """int32 [B, k, t] with t <= max_new: k sampled continuations per prompt, generated `chunk` tokens at a
    time; after each chunk `finished(tokens_BxKxt)` (e.g. "every trajectory's label window has closed") may
    stop the rollout early.

    When prompt + max_new fits in `max_len` (the positions the model was trained on), one cache holds it all
    and the prompt is prefilled once per prompt. Otherwise the rollout slides: each chunk starts from a fresh
    prefill of the row's most recent max_len - chunk tokens (prompt and generated so far), cut by
    `recontext(tokens_NxL, lengths_N, keep) -> (tokens_Nxkeep, lengths_N)` (zero-shot keeps the demographic
    prefix and starts on an event boundary). Shapes are fixed, so each path compiles once."""
    import numpy as np  # noqa: PLC0415

    prompts = np.asarray(prompts_BxP, dtype=np.int32)
    lengths = np.asarray(lengths_B, dtype=np.int32)
    B, P = prompts.shape
    vocab = params["head_DxV"].shape[-1]
    banned_np = np.zeros(vocab, dtype=bool)
    banned_np[list(banned)] = True
    banned_V = jnp.asarray(banned_np)
    chunk = max(1, min(chunk, max_new))
    n_chunks = -(-max_new // chunk)
    keys = jax.random.split(key, n_chunks)
    sliding = max_len is not None and P + n_chunks * chunk > max_len
    out = []
    if not sliding:
        carry = _prefill_jit(graphdef, params, jnp.asarray(prompts), jnp.asarray(lengths), k=k,
                             total=P + n_chunks * chunk)
        for key_i in keys:
            carry, tokens = _decode_chunk_jit(graphdef, params, carry, key_i, banned_V, steps=chunk,
                                              temperature=float(temperature))
            out.append(np.asarray(tokens))
            if finished is not None and finished(np.concatenate(out, axis=1).reshape(B, k, -1)):
                break
        return np.concatenate(out, axis=1).reshape(B, k, -1)[:, :, :max_new]
    keep = max_len - chunk
    if recontext is None or keep < 8:
        raise ValueError(f"a rollout of {max_new} tokens after {P}-token prompts exceeds max_len {max_len}: "
                         "pass recontext and a chunk well below max_len")
    R = B * k
    seqs = np.zeros((R, P + n_chunks * chunk), np.int32)
    seqs[:, :P] = np.repeat(prompts, k, axis=0)
    lens = np.repeat(lengths, k).astype(np.int64)
    for i, key_i in enumerate(keys):
        if i == 0:
            ctx, ctx_len = recontext(prompts, lengths, keep)
            carry = _prefill_jit(graphdef, params, jnp.asarray(ctx, jnp.int32), jnp.asarray(ctx_len, jnp.int32),
                                 k=k, total=max_len)
        else:
            ctx, ctx_len = recontext(seqs, lens, keep)
            carry = _prefill_jit(graphdef, params, jnp.asarray(ctx, jnp.int32), jnp.asarray(ctx_len, jnp.int32),
                                 k=1, total=max_len)
        carry, tokens = _decode_chunk_jit(graphdef, params, carry, key_i, banned_V, steps=chunk,
                                          temperature=float(temperature))
        tokens = np.asarray(tokens)
        out.append(tokens)
        seqs[np.arange(R)[:, None], lens[:, None] + np.arange(chunk)[None]] = tokens
        lens = lens + chunk
        if finished is not None and finished(np.concatenate(out, axis=1).reshape(B, k, -1)):
            break
    return np.concatenate(out, axis=1).reshape(B, k, -1)[:, :, :max_new]


def sample_continuations(graphdef, params, prompts_BxP, lengths_B, *, k: int, max_new: int, key,
                         banned=(), temperature: float = 1.0):
    """int32 [B, k, max_new]: k sampled continuations of each prompt (see the module doc)."""
    return sample_until(graphdef, params, prompts_BxP, lengths_B, k=k, max_new=max_new, key=key, banned=banned,
                        temperature=temperature, chunk=max_new)


@partial(jax.jit, static_argnames=("graphdef",))
def pooled_jit(graphdef, params, tokens_BxL, lengths_B):
    return pooled(nnx.merge(graphdef, params), tokens_BxL, lengths_B)


@partial(jax.jit, static_argnames=("graphdef",))
def cached_logits_jit(graphdef, params, prompts_BxP, lengths_B, next_tokens_BxT):
    """Logits after each teacher-forced token of `next_tokens` via the cache (for checking the cache
    against the full forward): [B, T, V], row b's t-th logits predicting the token after next_tokens[b, t]."""
    model = nnx.merge(graphdef, params)
    B, P = prompts_BxP.shape
    T = next_tokens_BxT.shape[1]
    _, k_cache, v_cache = _prefill(model, prompts_BxP, lengths_B, P + T)

    def step(carry, token_B):
        k_cache, v_cache, pos_B = carry
        logits_BxV, k_cache, v_cache = _decode_step(model, token_B, pos_B, k_cache, v_cache)
        return (k_cache, v_cache, pos_B + 1), logits_BxV

    _, logits_TxBxV = jax.lax.scan(step, (k_cache, v_cache, lengths_B), next_tokens_BxT.T)
    return logits_TxBxV.transpose(1, 0, 2)
