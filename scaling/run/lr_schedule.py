"""AdamW with warmup then cosine decay to the run's last step (or warmup-stable-decay, below), as an
optax chain whose schedule parameters live in the optimizer state rather than in the compiled program.

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

from medscale.scaling.sweep.wsd import cooldown_start  # noqa: F401 - where a WSD run's cooldown starts (no jax there)


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


# ---------------------------------------------------------------------------------------------
# Warmup-stable-decay (WSD): warmup, a constant stable phase, then a cooldown over the run's last
# steps (Hu et al. 2024, Hägele et al. 2024). The learning rate before the cooldown does not depend on
# the run's length, which is what lets one long run ("trunk") stand in for the first part of every
# shorter run of the same model, learning rate and seed (scaling/sweep/wsd.py).
# ---------------------------------------------------------------------------------------------

COOLDOWN_SHAPES = ("linear", "1-sqrt")  # index = the traced `shape` value


class WarmupStableDecayState(NamedTuple):
    count: jax.Array           # int32: updates applied so far
    peak: jax.Array            # float32 peak learning rate
    warmup: jax.Array          # float32 warmup steps (linear from 0)
    decay_start: jax.Array     # float32 first step of the cooldown
    total: jax.Array           # float32 total steps (the cooldown reaches end_ratio * peak here)
    end_ratio: jax.Array       # float32 final learning rate / peak
    shape: jax.Array           # float32 0: linear cooldown, 1: 1-sqrt cooldown


def warmup_stable_decay_lr(step, peak, warmup, decay_start, total, end_ratio, shape, xp=jnp):
    """The learning rate used by update number `step` (0-based); `shape` 0 = linear, 1 = 1-sqrt.
    Before `decay_start` it is exactly `peak` (after warmup), whatever `total` is."""
    warm = peak * step / xp.maximum(warmup, 1.0)
    progress = xp.clip((step - decay_start) / xp.maximum(total - decay_start, 1.0), 0.0, 1.0)
    left = xp.where(shape > 0.5, 1.0 - xp.sqrt(progress), 1.0 - progress)
    cool = peak * (end_ratio + (1.0 - end_ratio) * left)
    return xp.where(step < warmup, warm, xp.where(step < decay_start, peak, cool))


def scale_by_warmup_stable_decay(peak: float, warmup: int, decay_start: int, total: int, end_ratio: float,
                                 shape: str) -> optax.GradientTransformation:
    if shape not in COOLDOWN_SHAPES:
        raise ValueError(f"cooldown shape {shape!r}: one of {COOLDOWN_SHAPES}")

    def init(params) -> WarmupStableDecayState:
        del params
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return WarmupStableDecayState(jnp.zeros((), jnp.int32), f32(peak), f32(warmup), f32(decay_start), f32(total),
                                      f32(end_ratio), f32(COOLDOWN_SHAPES.index(shape)))

    def update(updates, state: WarmupStableDecayState, params=None):
        del params
        lr = warmup_stable_decay_lr(state.count.astype(jnp.float32), state.peak, state.warmup, state.decay_start,
                                    state.total, state.end_ratio, state.shape)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def adamw_warmup_stable_decay(*, lr: float, warmup_steps: int, decay_start: int, total_steps: int,
                              min_lr_ratio: float = 0.1, cooldown_shape: str = "linear", weight_decay: float = 0.1,
                              b1: float = 0.9, b2: float = 0.95, clip: float = 1.0) -> optax.GradientTransformation:
    """clip -> Adam -> decoupled weight decay (matrices only) -> warmup, stable, cooldown learning rate."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.scale_by_adam(b1=b1, b2=b2),
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        scale_by_warmup_stable_decay(lr, warmup_steps, decay_start, total_steps, min_lr_ratio, cooldown_shape),
    )


def with_schedule_of(opt_state, fresh):
    """`opt_state` (restored from a trunk's fork checkpoint) with the schedule fields of `fresh` (this run's
    own `tx.init`) and the update count of `opt_state`: a branch continues the trunk's moments and step
    count but cools down to its own length."""
    def swap(restored, own):
        if not isinstance(restored, WarmupStableDecayState):
            return restored
        placed = [jax.device_put(o, getattr(r, "sharding", None)) for r, o in zip(restored, own)]
        return WarmupStableDecayState(*placed)._replace(count=restored.count)

    is_leaf = lambda x: isinstance(x, WarmupStableDecayState)  # noqa: E731
    return jax.tree.map(swap, opt_state, fresh, is_leaf=is_leaf)
