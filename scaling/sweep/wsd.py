"""Warmup-stable-decay sweeps: one trunk per (model, learning rate, seed), a cooldown branch per shorter budget.

Under `optimizer.schedule: wsd` the learning rate before a run's cooldown is warmup then the constant
peak, whatever the run's length. So every run of one family (same model, learning rate, seed, data
fraction) follows the same trajectory up to the step where its own cooldown starts, and only the
longest run of the family (the trunk) needs to be trained from step 0:

    trunk   the family's largest budget, trained from scratch; its config lists, in
            checkpoint.fork_steps, the steps at which it keeps a fork checkpoint (<trunk>/forks/<step>)
    branch  each smaller budget D_b: train.parent is the trunk's run id and train.fork_step the step
            where D_b's cooldown starts (cooldown_start(steps_b, cooldown_fraction)); it restores the
            trunk's fork checkpoint (params, optimizer moments, step count; the batch of step s depends
            only on the seed and s) and trains its own cooldown to its own total steps

A branch is therefore the same computation as its budget trained from scratch under WSD with the same
seed, and when its fork checkpoint cannot be had (the trunk finished before the branch was added, or
failed) it is trained from scratch instead, with the same result. Every member of a family shares
warmup_steps (warmup_fraction of the family's shortest run), so that their schedules agree before the fork.

Identity: parent and fork_step are part of a branch's `train` (so of its hash); fork_steps is in the
trunk's `checkpoint`, outside the identity (adding a budget does not rename the trunk).
"""
from __future__ import annotations

from pathlib import Path

from medscale.scaling.plan.flops import flops_per_token
from medscale.scaling.run.run_config import RunConfig
from medscale.scaling.sweep.step_dir import canonical
from medscale.scaling.sweep.store import run_id

FORKS_DIR = "forks"  # <trunk run>/forks/<step>: the trunk's fork checkpoints, kept for good


def cooldown_start(total_steps: int, cooldown_fraction: float) -> int:
    """The first step of a WSD run's cooldown: its last `cooldown_fraction` of steps cool down (rounded)."""
    return total_steps - int(round(cooldown_fraction * total_steps))


def _family(run: RunConfig) -> str:
    """What trunk and branches share: everything but the budget and its length."""
    body = run.to_dict()
    train = {k: v for k, v in body["train"].items() if k not in ("tokens", "steps", "warmup_steps")}
    return canonical({**{k: v for k, v in body.items() if k not in ("budget", "train", "checkpoint")}, "train": train})


def trunks_and_branches(runs: list[RunConfig], optimizer) -> list[RunConfig]:
    """A grid's resolved runs (as under cosine) as WSD trunks and branches."""
    runs = [r.replace(train=dict(schedule="wsd", cooldown_fraction=optimizer.cooldown_fraction,
                                 cooldown_shape=optimizer.cooldown_shape)) for r in runs]
    families: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        families.setdefault(_family(r), []).append(i)
    for members in families.values():
        members.sort(key=lambda i: runs[i].train.steps)
        warmup = max(1, round(optimizer.warmup_fraction * runs[members[0]].train.steps))
        for i in members:
            runs[i] = runs[i].replace(train={"warmup_steps": warmup})
        trunk, branches = members[-1], members[:-1]
        if not branches:
            continue
        starts = {b: cooldown_start(runs[b].train.steps, optimizer.cooldown_fraction) for b in branches}
        runs[trunk] = runs[trunk].replace(checkpoint={"fork_steps": tuple(sorted(set(starts.values())))})
        parent = run_id(runs[trunk])
        for b in branches:
            runs[b] = runs[b].replace(train={"parent": parent, "fork_step": starts[b]})
    return runs


def fork_of(config: RunConfig | dict) -> tuple[str, int] | None:
    """(parent run id, fork step) of a branch's config; None for any other run."""
    return RunConfig.coerce(config).train.fork


def fork_checkpoint(run_path: Path, config: RunConfig | dict) -> Path | None:
    """Where a branch's fork checkpoint is (in its trunk's folder, a sibling of the branch's); None if no branch."""
    fork = fork_of(config)
    return None if fork is None else Path(run_path).parent / fork[0] / FORKS_DIR / str(fork[1])


def fork_ready(run_path: Path, config: RunConfig | dict) -> bool:
    """Whether the trunk has written this branch's fork checkpoint (orbax renames a checkpoint into its
    final name only once it is complete)."""
    path = fork_checkpoint(run_path, config)
    return path is not None and path.is_dir()


def trained_steps(config: RunConfig | dict) -> int:
    """Steps this run itself trains: all of them, but a branch only its cooldown."""
    return RunConfig.coerce(config).trained_steps


def compute_comparison(runs: list[RunConfig]) -> dict:
    """Full training FLOPs of the plan as given (WSD: trunks plus branch cooldowns) and of the same grid
    under cosine (every run from scratch); for the dry run."""
    runs = [RunConfig.coerce(r) for r in runs]
    planned = cosine = 0.0
    for r in runs:
        per_step = flops_per_token(r.model, r.data.seq_len, r.param_count).full * r.tokens_per_step
        planned += per_step * r.trained_steps
        cosine += per_step * r.train.steps
    return {"planned_flops": planned, "cosine_flops": cosine,
            "trunks": sum(1 for r in runs if r.checkpoint.fork_steps),
            "branches": sum(1 for r in runs if r.train.fork)}
