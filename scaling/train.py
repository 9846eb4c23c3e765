"""One training run: the point on a scaling curve.

AdamW with warmup then cosine decay to the run's own token budget (so every run is a finished run,
as Chinchilla requires), gradient clipping, grain batches indexed by step, orbax checkpoints and
exact resume, held-out loss at intervals, NaN/inf -> `diverged` with the step.

Exact resume rests on three facts: the batch for step s depends only on (seed, s); the state
(params, optimizer, step) is checkpointed whole; the same program is compiled on restart. So a
run killed at any point and resumed ends with the same loss as one never interrupted.

A run may be one process or a gang of several (scaling/gang.py), one per host: each feeds only the
batch rows its devices hold, process 0 alone takes the lease and writes status, curve and metrics,
and every process takes part in saving and restoring checkpoints. Checkpoints are taken every
`checkpoint.every_steps` steps, every `checkpoint.every_minutes` minutes of training, and on SIGTERM
(scaling/preemption.py), after which the run stops with the resumable state "preempted".
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from medscale.atomic import write_json, write_with
from medscale.scaling.flops import device_peak_flops, flops_per_token, mfu
from medscale.scaling.preemption import DEFAULT_GRACE_S, PreemptionGuard
from medscale.scaling.store import LeaseHeld, RunDir
from medscale.scaling.tracking import RunTracker
from medscale.scaling.wsd import FORKS_DIR, fork_checkpoint, fork_of

OBJECTIVE_TO_LOADER = {"decoder": "next_event", "encoder": "masked_event"}


class Preempted(Exception):
    """SIGTERM arrived; the run saved a checkpoint at `step` and stopped."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step}")
        self.step = step


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


def make_optimizer(train: dict, total_steps: int):
    """(optax transformation, host-side learning-rate function of the step). `train.schedule` is cosine
    (the default, absent from older configs) or wsd (warmup, stable, cooldown: scaling/schedule.py)."""
    import numpy as np

    from medscale.scaling import schedule as sched

    warmup = int(train.get("warmup_steps", max(1, round(0.05 * total_steps))))
    warmup = min(warmup, max(1, total_steps - 1))
    end_ratio = train.get("min_lr_ratio", 0.1)
    common = dict(weight_decay=train.get("weight_decay", 0.1), b1=train.get("b1", 0.9), b2=train.get("b2", 0.95),
                  clip=train.get("clip", 1.0))
    if train.get("schedule", "cosine") == "wsd":
        decay_start = sched.cooldown_start(total_steps, train["cooldown_fraction"])
        shape = train.get("cooldown_shape", "linear")
        tx = sched.adamw_warmup_stable_decay(lr=train["lr"], warmup_steps=warmup, decay_start=decay_start,
                                             total_steps=total_steps, min_lr_ratio=end_ratio, cooldown_shape=shape,
                                             **common)
        code = sched.COOLDOWN_SHAPES.index(shape)
        lr_at = lambda step: float(sched.warmup_stable_decay_lr(  # noqa: E731
            np.float64(step), train["lr"], warmup, decay_start, total_steps, end_ratio, code, xp=np))
        return tx, lr_at
    tx = sched.adamw_warmup_cosine(lr=train["lr"], warmup_steps=warmup, total_steps=total_steps,
                                   min_lr_ratio=end_ratio, **common)
    lr_at = lambda step: float(sched.warmup_cosine_lr(np.float64(step), train["lr"], warmup, total_steps, end_ratio, xp=np))  # noqa: E731
    return tx, lr_at


def _checkpoint_manager(path: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(path.absolute(), options=options)


def _fork_manager(path: Path, *, read_only: bool):
    """The trunk's fork checkpoints (<run>/forks/<step>): kept for good, saved synchronously (a branch may
    start from one as soon as its folder has its final name)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(path.absolute(), options=options)


def _restore_fork(path: Path, abstract, log: Callable[[str], None]):
    """A branch's starting state from its trunk's fork checkpoint, or None when it cannot be restored."""
    import orbax.checkpoint as ocp

    try:
        mngr = _fork_manager(path.parent, read_only=True)
        try:
            return mngr.restore(int(path.name), args=ocp.args.StandardRestore(abstract))
        finally:
            mngr.close()
    except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
        why = (str(err).strip().splitlines() or [""])[0][:160]
        log(f"fork checkpoint {path} cannot be restored ({type(err).__name__}: {why}); training from step 0 "
            "instead (the same computation)")
        return None


FORKED_FILE = "forked.json"  # in a WSD branch's folder once it started from its trunk's fork checkpoint


def _forked_at(run: RunDir) -> int | None:
    """The trunk step a branch started from, None when it trained from step 0."""
    from medscale.atomic import read_json

    try:
        return int((read_json(run.path / FORKED_FILE) or {})["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _restore_newest_intact(mngr, abstract, ckpt_dir: Path, log: Callable[[str], None]):
    """(state, step) from the newest checkpoint that restores. One that does not (torn, corrupted) is
    moved aside to `<run>/ckpt-damaged/<step>` with a message, and the one before it is tried.
    (None, None) when none restores: the run starts again from step 0."""
    import orbax.checkpoint as ocp

    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), int(step)
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
            aside = ckpt_dir.parent / "ckpt-damaged" / str(step)
            why = (str(err).strip().splitlines() or [""])[0][:160]
            log(f"checkpoint at step {step} cannot be restored ({type(err).__name__}: {why}); "
                f"moved to {aside}, trying the one before")
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt_dir / str(step), aside)
            mngr.reload()
    return None, None


def _held_out_loss(eval_step, state, batches, place) -> float:
    loss_sum, weight_sum = 0.0, 0.0
    outs = [eval_step(state, place(b)) for b in batches]
    for out in outs:
        loss_sum += float(out["loss_sum"])
        weight_sum += float(out["weight_sum"])
    return loss_sum / max(weight_sum, 1e-9)


def _devices_for_one_process(devices: int) -> int:
    import jax

    if jax.process_count() > 1:
        raise ValueError("devices= picks devices of a single process; a gang uses all of the job's devices")
    if not 1 <= devices <= jax.device_count():
        raise ValueError(f"devices={devices}: this process has {jax.device_count()} device(s)")
    return devices


def train_run(run: RunDir, *, log: Callable[[str], None] | None = None,
              process_started: float | None = None, preemption: PreemptionGuard | None = None,
              devices: int | None = None) -> dict:
    """Train (or resume) the run in `run`'s folder to its token budget; returns its final metrics.

    `devices`: train on the first this-many devices of this (single) process (default: all of them;
    a run in a sweep's worker gets exactly the devices its resources ask for).
    Raises Preempted once `preemption` saw SIGTERM and the checkpoint is saved. However it ends, the
    checkpoint managers and the tracker are closed: the process (a reused Ray worker) may train another run."""
    with contextlib.ExitStack() as closing:
        return _train(run, log=log, process_started=process_started, preemption=preemption, devices=devices,
                      closing=closing)


def _train(run: RunDir, *, log, process_started, preemption, devices, closing: contextlib.ExitStack) -> dict:
    import jax
    import orbax.checkpoint as ocp

    from medscale.data.loader import eval_batches, train_batches, unique_train_tokens
    from medscale.models.config import ModelConfig, counted_params, param_counts
    from medscale.models.options import ModelOptions
    from medscale.models.sharding import batch_sharding, make_mesh, mesh_axes, shard_batch
    from medscale.models.step import (abstract_train_state, check_microbatches, init_train_state, make_eval_step,
                                      make_train_step)
    from medscale.scaling.distributed import Agreement, is_primary, process_rows
    from medscale.scaling.schedule import with_schedule_of

    log = log or (lambda msg: None)
    t0 = process_started or time.time()
    timing = {"startup_s": time.time() - t0, "compile_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "ckpt_s": 0.0}
    cfg = run.config()
    model_cfg = ModelConfig.from_dict(cfg["model"])
    data_cfg, train_cfg, eval_cfg = cfg["data"], cfg["train"], cfg["eval"]
    B, L = data_cfg["batch_size"], data_cfg["seq_len"]
    total_steps = train_cfg["steps"]
    objective = OBJECTIVE_TO_LOADER[cfg["objective"]]

    options = ModelOptions.from_dict(cfg.get("options"))
    try:  # the spec checked this against the devices it expected; this is the devices the run got
        n_devices = jax.device_count() if devices is None else _devices_for_one_process(devices)
        mesh = make_mesh(**mesh_axes(cfg.get("mesh"), n_devices), devices=jax.devices()[:n_devices])
        check_microbatches(B, options.microbatches, mesh)
    except ValueError as err:
        raise RuntimeError(f"{run.path / 'config.yaml'}: {err} (resources.mesh / optimizer.microbatches)") from None
    tx, schedule = make_optimizer(train_cfg, total_steps)
    mngr = _checkpoint_manager(run.ckpt_dir)
    closing.callback(mngr.close)
    latest = mngr.latest_step()
    # a WSD branch without checkpoints of its own starts from its trunk's fork checkpoint (scaling/wsd.py)
    fork_path = fork_checkpoint(run.path, cfg) if latest is None else None
    if fork_path is not None and not fork_path.is_dir():
        log(f"fork checkpoint {fork_path} is not there: training this branch from step 0 (the same computation)")
        fork_path = None
    fork_steps = set((cfg.get("checkpoint") or {}).get("fork_steps") or [])  # a WSD trunk keeps these
    forks = _fork_manager(run.path / FORKS_DIR, read_only=False) if fork_steps else None
    if forks is not None:
        closing.callback(forks.close)
    if latest is None and fork_path is None:
        graphdef, state = init_train_state(model_cfg, tx, mesh, seed=train_cfg["seed"], options=options)
    else:
        graphdef, abstract = abstract_train_state(model_cfg, tx, mesh, options=options)
    train_step = make_train_step(graphdef, tx, mesh, microbatches=options.microbatches)
    eval_step = make_eval_step(graphdef, mesh)
    place = lambda batch: shard_batch(batch, mesh)  # noqa: E731

    primary = is_primary()
    # with several processes each loads only the rows its devices hold
    rows = process_rows(batch_sharding(mesh), B, L) if jax.process_count() > 1 else None
    batches = train_batches(data_cfg["token_dir"], "train", seq_len=L, batch_size=B, objective=objective,
                            seed=train_cfg["seed"], mask_prob=data_cfg.get("mask_prob", 0.15),
                            train_fraction=data_cfg.get("train_fraction", 1.0), rows=rows)
    held_out = list(eval_batches(data_cfg["token_dir"], eval_cfg.get("split", "tuning"), seq_len=L,
                                 batch_size=B, objective=objective, n_batches=eval_cfg["batches"], rows=rows))

    start_step = 0
    curve: list[dict] = []
    if latest is not None:
        t = time.time()
        state, latest = _restore_newest_intact(mngr, abstract, run.ckpt_dir, log)
        if latest is None:  # no checkpoint restores: start again
            graphdef, state = init_train_state(model_cfg, tx, mesh, seed=train_cfg["seed"], options=options)
    if latest is not None:
        start_step = int(latest)
        timing["ckpt_s"] += time.time() - t
        curve = [r for r in run.curve() if r["step"] <= start_step]
        log(f"resumed from step {start_step}/{total_steps}")
    if fork_path is not None:
        t = time.time()
        restored = _restore_fork(fork_path, abstract, log)
        if restored is None:
            graphdef, state = init_train_state(model_cfg, tx, mesh, seed=train_cfg["seed"], options=options)
        else:
            # the trunk's params, moments and step count, with this branch's own cooldown
            restored["opt_state"] = with_schedule_of(restored["opt_state"], tx.init(restored["params"]))
            state = restored
            start_step = int(fork_path.name)
            timing["ckpt_s"] += time.time() - t
            trunk = RunDir(fork_path.parent.parent)
            curve = [r for r in trunk.curve() if r["step"] <= start_step]
            if primary:
                write_json(run.path / FORKED_FILE, {"parent": trunk.run_id, "step": start_step})
            log(f"forked from trunk {trunk.run_id} at step {start_step}/{total_steps}")

    counts = param_counts(model_cfg)
    n_counted = counted_params(model_cfg, cfg.get("param_count"))
    flops = flops_per_token(model_cfg, L, cfg.get("param_count"))
    tokens_per_step = B * L
    eval_every = max(1, eval_cfg.get("every_steps") or math.ceil(total_steps / max(1, eval_cfg.get("n_evals", 8))))
    tracker = RunTracker(run.path, run.run_id, cfg) if primary else None  # TensorBoard files under <run>/tb/
    if tracker is not None:
        closing.callback(tracker.close)
    peak_all = device_peak_flops()[0] * n_devices
    since = {"time": time.time(), "step": start_step, "grad_norm": None}
    ckpt_every = max(1, cfg.get("checkpoint", {}).get("every_steps", 200))
    ckpt_minutes = cfg.get("checkpoint", {}).get("every_minutes")
    agreement = Agreement()
    last_save = time.time()

    def record_eval(step: int, train_loss: float | None) -> float:
        t = time.time()
        loss = _held_out_loss(eval_step, state, held_out, place)
        timing["eval_s"] += time.time() - t
        tokens = step * tokens_per_step
        curve.append({"step": step, "tokens": tokens, "compute": flops.six_n * tokens,
                      "loss": loss, "train_loss": train_loss, "lr": schedule(max(step - 1, 0))})
        rate = (step - since["step"]) * tokens_per_step / max(time.time() - since["time"], 1e-9)
        if primary:
            frame = pd.DataFrame(curve)
            write_with(run.curve_path, lambda p: frame.to_csv(p, index=False))
            tracker.log(step, {"loss/held_out": loss, "loss/train": train_loss, "lr": curve[-1]["lr"],
                               "grad_norm": None if since["grad_norm"] is None else float(since["grad_norm"]),
                               "tokens_per_sec": rate if step > since["step"] else None,
                               "mfu": mfu(rate, model_cfg, L, peak_all) if step > since["step"] else None})
        since.update(time=time.time(), step=step)
        return loss

    def check_finite(step: int, loss_value: float) -> None:
        if not math.isfinite(loss_value):
            raise Diverged(step, loss_value)

    step = start_step
    pending_loss = None  # loss of the step before the one in flight: checked without stalling
    last_train_loss = None
    t_loop = time.time()
    in_loop_other = 0.0
    while step < total_steps:
        batch = place(batches[step])
        state, metrics = train_step(state, batch)
        since["grad_norm"] = metrics.get("grad_norm")
        if step == start_step:
            last_train_loss = float(metrics["loss"])  # the first step in a process includes compilation
            check_finite(step + 1, last_train_loss)
            timing["compile_s"] = time.time() - t_loop
        elif pending_loss is not None:
            last_train_loss = float(pending_loss)
            check_finite(step, last_train_loss)
        pending_loss = metrics["loss"]
        step += 1
        clock_due = bool(ckpt_minutes) and time.time() - last_save >= 60.0 * ckpt_minutes
        if clock_due:
            last_save = time.time()  # asked for once; with several processes it is saved a step later
        stop, clock_ckpt = agreement.vote(bool(preemption and preemption.requested), clock_due)
        stop = stop and step < total_steps
        do_eval = step % eval_every == 0 or step == total_steps
        do_ckpt = step % ckpt_every == 0 or step == total_steps or clock_ckpt or stop
        if do_eval or do_ckpt or step in fork_steps:
            last_train_loss = float(pending_loss)
            check_finite(step, last_train_loss)
            t = time.time()
            if do_eval:
                record_eval(step, last_train_loss)
            if step in fork_steps and step not in forks.all_steps():  # before the (async) regular one
                tc = time.time()
                forks.save(step, args=ocp.args.StandardSave(state))
                forks.wait_until_finished()
                timing["ckpt_s"] += time.time() - tc
            if do_ckpt:
                tc = time.time()
                mngr.save(step, args=ocp.args.StandardSave(state))
                timing["ckpt_s"] += time.time() - tc
                last_save = time.time()
            in_loop_other += time.time() - t
            log(f"step {step}/{total_steps} train_loss {last_train_loss:.4f}")
        if stop:
            mngr.wait_until_finished()
            raise Preempted(step)
    loop_s = time.time() - t_loop
    t = time.time()
    mngr.wait_until_finished()
    timing["ckpt_s"] += time.time() - t
    timing["train_s"] = max(0.0, loop_s - in_loop_other - timing["compile_s"])

    if not curve or curve[-1]["step"] != total_steps:
        record_eval(total_steps, last_train_loss)
    steps_timed = max(0, step - start_step - 1)
    tokens_per_sec = steps_timed * tokens_per_step / timing["train_s"] if steps_timed and timing["train_s"] > 0 else None
    peak, peak_source = device_peak_flops()
    tokens = total_steps * tokens_per_step
    from medscale.data.token_store import events_per_token

    per_token = events_per_token(data_cfg["token_dir"])
    return {
        "loss": curve[-1]["loss"],
        "train_loss": last_train_loss,
        "params": n_counted,
        "param_count": cfg.get("param_count", "non_embedding"),
        "params_non_embedding": counts.non_embedding,
        "params_total": counts.total,
        "tokens": tokens,
        # Unique tokens U of the windows the run draws from; epochs > 1 means it repeated data.
        "unique_tokens": (unique := unique_train_tokens(data_cfg["token_dir"], "train", L,
                                                        data_cfg.get("train_fraction", 1.0))),
        "epochs": tokens / unique, "train_fraction": data_cfg.get("train_fraction", 1.0),
        "lr_multiplier": train_cfg.get("lr_multiplier"),
        "events": tokens * per_token if per_token else None,   # tokens seen x events per token (manifest)
        "steps": total_steps,
        "compute": flops.six_n * tokens,  # C = 6ND under the run's parameter convention
        "flops_full": flops.full * tokens,
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu(tokens_per_sec, model_cfg, L, peak * n_devices) if tokens_per_sec else None,
        "peak_flops": peak * n_devices,
        "peak_source": peak_source,
        "devices": n_devices,
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "resumed_from_step": start_step,
        # a WSD branch: the step of its trunk it started from (None: trained from step 0)
        **({"forked_at_step": _forked_at(run)} if fork_of(cfg) else {}),
        **{f"time_{k}": v for k, v in timing.items()},
    }


def execute_run(run: RunDir, *, stale_after: float = 60.0, log: Callable[[str], None] | None = None,
                process_started: float | None = None, devices: int | None = None) -> str:
    """Take the run's lease, train it, record the outcome. Returns the run's state afterwards.

    Returns "leased" without touching anything when another live process holds the run.
    A failure is recorded in status.json and re-raised, so a scheduler sees it too.
    "preempted": SIGTERM arrived, a checkpoint was saved; the run resumes from it when relaunched.

    In a gang (several JAX processes) every process calls this; process 0 alone reads the status,
    takes the lease and writes, and tells the others whether to train.
    """
    from medscale.scaling.distributed import broadcast_from_primary, is_primary

    grace = float((run.config().get("checkpoint") or {}).get("grace_seconds") or DEFAULT_GRACE_S)
    if not is_primary():
        go = broadcast_from_primary(0)
        if go:
            with PreemptionGuard(grace) as guard:
                try:
                    train_run(run, log=log, process_started=process_started, preemption=guard)
                except Diverged:
                    return "diverged"
                except Preempted:
                    return "preempted"
        return run.state()
    lease = None
    if run.state() not in ("done", "diverged"):
        try:
            lease = run.acquire_lease(stale_after=stale_after)
        except LeaseHeld:
            pass
    go = lease is not None and run.status()["state"] not in ("done", "diverged")
    broadcast_from_primary(int(go))
    if lease is None:
        return "leased" if run.state() not in ("done", "diverged") else run.state()
    with lease:
        status = run.status()
        if not go:
            return status["state"]
        run.set_status("running", attempts=int(status.get("attempts", 0)) + 1, started_at=time.time(),
                       error=None, host=socket.gethostname(), pid=os.getpid())
        expired = lambda: run.set_status("preempted", error="grace period ran out before the checkpoint")  # noqa: E731
        try:
            with PreemptionGuard(grace, on_expire=expired) as guard:
                metrics = train_run(run, log=log, process_started=process_started, preemption=guard, devices=devices)
        except Diverged as err:
            run.set_status("diverged", diverged_step=err.step, error=str(err))
            return "diverged"
        except Preempted as err:
            run.set_status("preempted", preempted_step=err.step, error=None)
            log and log(str(err))
            return "preempted"
        except BaseException as err:
            run.set_status("failed", error="".join(traceback.format_exception_only(type(err), err)).strip(),
                           traceback=traceback.format_exc()[-4000:])
            raise
        write_json(run.metrics_path, metrics)
        run.set_status("done", finished_at=time.time())
        return "done"
