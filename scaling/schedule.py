"""AdamW with warmup then cosine decay to the run's last step, as an optax chain whose schedule
parameters live in the optimizer state rather than in the compiled program.

Why: with the peak learning rate, warmup and total steps as traced state (not constants), every run
of one model shape compiles to the same program, whatever its token budget or learning rate, so the
persistent compilation cache shared by a sweep's runs hits for every IsoFLOP budget and every point
of a learning-rate axis. The schedule is also checkpointed with the state, so a resumed run cannot
silently change it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class WarmupCosineState(NamedTuple):
    count: jax.Array      # int32: updates applied so far
    peak: jax.Array       # float32 peak learning rate
    warmup: jax.Array     # float32 warmup steps (linear from 0)
    total: jax.Array      # float32 total steps (cosine reaches end_ratio * peak here)
    end_ratio: jax.Array  # float32 final learning rate / peak


def warmup_cosine_lr(step, peak, warmup, total, end_ratio, xp=jnp):
    """The learning rate used by update number `step` (0-based). `xp` is jnp or a numpy-like module."""
    warm = peak * step / xp.maximum(warmup, 1.0)
    progress = xp.clip((step - warmup) / xp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = peak * (end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + xp.cos(math.pi * progress)))
    return xp.where(step < warmup, warm, cosine)


def scale_by_warmup_cosine(peak: float, warmup: int, total: int, end_ratio: float) -> optax.GradientTransformation:
    def init(params) -> WarmupCosineState:
        del params
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return WarmupCosineState(jnp.zeros((), jnp.int32), f32(peak), f32(warmup), f32(total), f32(end_ratio))

    def update(updates, state: WarmupCosineState, params=None):
        del params
        lr = warmup_cosine_lr(state.count.astype(jnp.float32), state.peak, state.warmup, state.total, state.end_ratio)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def adamw_warmup_cosine(*, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1,
                        weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.95, clip: float = 1.0,
                        ) -> optax.GradientTransformation:
    """clip -> Adam -> decoupled weight decay (matrices only) -> warmup+cosine learning rate (= optax.adamw)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.scale_by_adam(b1=b1, b2=b2),
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        scale_by_warmup_cosine(lr, warmup_steps, total_steps, min_lr_ratio),
    )
