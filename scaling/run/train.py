"""One training run: the point on a scaling curve.

AdamW with warmup then cosine decay to the run's own token budget (so every run is a finished run,
as Chinchilla requires), gradient clipping, grain batches indexed by step, orbax checkpoints and
exact resume, held-out loss at intervals, NaN/inf -> `diverged` with the step.

Exact resume rests on three facts: the batch for step s depends only on (seed, s); the state
(params, optimizer, step) is checkpointed whole; the same program is compiled on restart. So a
run killed at any point and resumed ends with the same loss as one never interrupted.

A run may be one process or a gang of several (scaling/sweep/gang.py), one per host: each feeds only the
batch rows its devices hold, process 0 alone takes the lease and writes status, curve and metrics,
and every process takes part in saving and restoring checkpoints. Checkpoints are taken every
`checkpoint.every_steps` steps, every `checkpoint.every_minutes` minutes of training, and on SIGTERM
(scaling/run/preemption.py), after which the run stops with the resumable state "preempted".
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from medscale.atomic import read_json, write_json, write_with
from medscale.models.config import counted_params, param_counts
from medscale.models.options import ModelOptions
from medscale.scaling.plan.flops import device_peak_flops, flops_per_token, mfu
from medscale.scaling.run.distributed import Agreement, broadcast_from_primary, is_primary, process_rows
from medscale.scaling.run.preemption import DEFAULT_GRACE_S, PreemptionGuard
from medscale.scaling.run.run_config import RunConfig, TrainConfig
from medscale.scaling.run.tracking import RunTracker
from medscale.scaling.sweep.store import LeaseHeld, RunDir
from medscale.scaling.sweep.wsd import FORKS_DIR, fork_checkpoint

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


def make_optimizer(train: TrainConfig | dict, total_steps: int):
    """(optax transformation, host-side learning-rate function of the step). `train.schedule` is cosine
    (the default, absent from older configs) or wsd (warmup, stable, cooldown: scaling/run/lr_schedule.py)."""
    from medscale.scaling.run import lr_schedule as sched  # imports JAX: see the module's note

    train = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(train, "train")
    warmup = train.warmup_steps if train.warmup_steps is not None else max(1, round(0.05 * total_steps))
    warmup = min(int(warmup), max(1, total_steps - 1))
    end_ratio = train.min_lr_ratio
    common = dict(weight_decay=train.weight_decay, b1=train.b1, b2=train.b2, clip=train.clip)
    if train.is_wsd:
        decay_start = sched.cooldown_start(total_steps, train.cooldown_fraction)
        shape = train.cooldown_shape or "linear"
        tx = sched.adamw_warmup_stable_decay(lr=train.lr, warmup_steps=warmup, decay_start=decay_start,
                                             total_steps=total_steps, min_lr_ratio=end_ratio, cooldown_shape=shape,
                                             **common)
        code = sched.COOLDOWN_SHAPES.index(shape)
        lr_at = lambda step: float(sched.warmup_stable_decay_lr(  # noqa: E731
            np.float64(step), train.lr, warmup, decay_start, total_steps, end_ratio, code, xp=np))
        return tx, lr_at
    tx = sched.adamw_warmup_cosine(lr=train.lr, warmup_steps=warmup, total_steps=total_steps,
                                   min_lr_ratio=end_ratio, **common)
    lr_at = lambda step: float(sched.warmup_cosine_lr(np.float64(step), train.lr, warmup, total_steps, end_ratio, xp=np))  # noqa: E731
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
    log = log or (lambda msg: None)
    clock = _Clock(process_started)
    cfg = run.run_config()
    built = _Built.for_run(run, cfg, devices)
    ckpts = _Checkpoints.open(run, cfg, closing)
    start = _starting_point(run, cfg, built, ckpts, clock, log)
    loop = _Loop(run, cfg, built, ckpts, start, clock, closing, preemption, log)
    loop.run()
    return _final_metrics(run, cfg, built, loop, clock)


class _Clock:
    """Where a run's wall time went: startup, compilation, training, evaluation, checkpoints."""

    def __init__(self, process_started: float | None):
        self.timing = {"startup_s": time.time() - (process_started or time.time()), "compile_s": 0.0,
                       "train_s": 0.0, "eval_s": 0.0, "ckpt_s": 0.0}

    @contextlib.contextmanager
    def counting(self, key: str):
        t = time.time()
        try:
            yield
        finally:
            self.timing[key] += time.time() - t


@dataclass
class _Built:
    """What one run computes with: the mesh, the optimizer, the compiled steps and the data."""

    model_cfg: Any
    options: Any
    mesh: Any
    n_devices: int
    tx: Any
    schedule: Callable[[int], float]
    graphdef: Any
    abstract: Any  # the state's shapes and shardings: what a checkpoint or fork restores into
    place: Callable  # a host batch -> sharded over the mesh
    train_step: Callable
    eval_step: Callable
    batches: Any
    held_out: list
    primary: bool

    @classmethod
    def for_run(cls, run: RunDir, cfg: RunConfig, devices: int | None) -> "_Built":
        import jax  # JAX loads inside: importing this module must not start it before runtime.configure_process

        from medscale.data.loader import eval_batches, train_batches
        from medscale.models.sharding import batch_sharding, make_mesh, mesh_axes, shard_batch
        from medscale.models.step import abstract_train_state, check_microbatches, make_eval_step, make_train_step

        B, L = cfg.data.batch_size, cfg.data.seq_len
        options = ModelOptions.from_dict(cfg.options)
        try:  # the spec checked this against the devices it expected; this is the devices the run got
            n_devices = jax.device_count() if devices is None else _devices_for_one_process(devices)
            mesh = make_mesh(**mesh_axes(cfg.mesh, n_devices), devices=jax.devices()[:n_devices])
            check_microbatches(B, options.microbatches, mesh)
        except ValueError as err:
            raise RuntimeError(f"{run.path / 'config.yaml'}: {err} (resources.mesh / optimizer.microbatches)") from None
        tx, schedule = make_optimizer(cfg.train, cfg.train.steps)
        graphdef, abstract = abstract_train_state(cfg.model, tx, mesh, options=options)
        objective = OBJECTIVE_TO_LOADER[cfg.objective]
        # with several processes each loads only the rows its devices hold
        rows = process_rows(batch_sharding(mesh), B, L) if jax.process_count() > 1 else None
        batches = train_batches(cfg.data.token_dir, "train", seq_len=L, batch_size=B, objective=objective,
                                seed=cfg.train.seed, mask_prob=cfg.data.mask_prob,
                                train_fraction=cfg.data.fraction, rows=rows)
        held_out = list(eval_batches(cfg.data.token_dir, cfg.eval.split, seq_len=L, batch_size=B,
                                     objective=objective, n_batches=cfg.eval.batches, rows=rows))
        return cls(cfg.model, options, mesh, n_devices, tx, schedule, graphdef, abstract,
                   lambda batch: shard_batch(batch, mesh),
                   make_train_step(graphdef, tx, mesh, microbatches=options.microbatches),
                   make_eval_step(graphdef, mesh), batches, held_out, is_primary())

    def fresh_state(self, seed: int):
        from medscale.models.step import init_train_state

        return init_train_state(self.model_cfg, self.tx, self.mesh, seed=seed, options=self.options)[1]


@dataclass
class _Checkpoints:
    """The run's own checkpoints and, for a WSD trunk, its fork checkpoints (scaling/sweep/wsd.py)."""

    mngr: Any
    forks: Any
    fork_steps: set

    @classmethod
    def open(cls, run: RunDir, cfg: RunConfig, closing: contextlib.ExitStack) -> "_Checkpoints":
        mngr = _checkpoint_manager(run.ckpt_dir)
        closing.callback(mngr.close)
        fork_steps = set(cfg.checkpoint.fork_steps or ())  # a WSD trunk keeps these
        forks = _fork_manager(run.path / FORKS_DIR, read_only=False) if fork_steps else None
        if forks is not None:
            closing.callback(forks.close)
        return cls(mngr, forks, fork_steps)


@dataclass
class _Start:
    state: Any
    step: int
    curve: list


def _starting_point(run: RunDir, cfg: RunConfig, built: _Built, ckpts: _Checkpoints, clock: _Clock, log) -> _Start:
    """Resume from the run's newest intact checkpoint; else (a WSD branch) fork from its trunk; else step 0."""
    if ckpts.mngr.latest_step() is not None:
        with clock.counting("ckpt_s"):
            state, step = _restore_newest_intact(ckpts.mngr, built.abstract, run.ckpt_dir, log)
        if step is None:  # no checkpoint restores: start again
            return _Start(built.fresh_state(cfg.train.seed), 0, [])
        log(f"resumed from step {step}/{cfg.train.steps}")
        return _Start(state, int(step), [r for r in run.curve() if r["step"] <= step])
    fork_path = fork_checkpoint(run.path, cfg)  # a WSD branch without checkpoints of its own
    if fork_path is not None and not fork_path.is_dir():
        log(f"fork checkpoint {fork_path} is not there: training this branch from step 0 (the same computation)")
        fork_path = None
    if fork_path is None:
        return _Start(built.fresh_state(cfg.train.seed), 0, [])
    return _forked(run, cfg, built, fork_path, clock, log)


def _forked(run: RunDir, cfg: RunConfig, built: _Built, fork_path: Path, clock: _Clock, log) -> _Start:
    """A branch's start: its trunk's params, moments and step count, with the branch's own cooldown."""
    from medscale.scaling.run.lr_schedule import with_schedule_of

    t = time.time()
    restored = _restore_fork(fork_path, built.abstract, log)
    if restored is None:
        return _Start(built.fresh_state(cfg.train.seed), 0, [])
    restored["opt_state"] = with_schedule_of(restored["opt_state"], built.tx.init(restored["params"]))
    step = int(fork_path.name)
    clock.timing["ckpt_s"] += time.time() - t
    trunk = RunDir(fork_path.parent.parent)
    if built.primary:
        write_json(run.path / FORKED_FILE, {"parent": trunk.run_id, "step": step})
    log(f"forked from trunk {trunk.run_id} at step {step}/{cfg.train.steps}")
    return _Start(restored, step, [r for r in trunk.curve() if r["step"] <= step])


class _Loop:
    """The training loop, with evaluation, checkpoints, WSD forks and preemption as its hooks."""

    def __init__(self, run: RunDir, cfg: RunConfig, built: _Built, ckpts: _Checkpoints, start: _Start,
                 clock: _Clock, closing: contextlib.ExitStack, preemption, log):
        self.run_dir, self.cfg, self.built, self.ckpts, self.clock = run, cfg, built, ckpts, clock
        self.preemption, self.log = preemption, log
        self.state, self.step, self.start_step, self.curve = start.state, start.step, start.step, start.curve
        self.total = cfg.train.steps
        self.flops = flops_per_token(cfg.model, cfg.data.seq_len, cfg.param_count)
        self.peak_all = device_peak_flops()[0] * built.n_devices
        self.eval_every = max(1, cfg.eval.every_steps or math.ceil(self.total / max(1, cfg.eval.n_evals)))
        self.ckpt_every = max(1, cfg.checkpoint.every_steps)
        self.ckpt_minutes = cfg.checkpoint.every_minutes
        self.tracker = RunTracker(run.path, run.run_id, cfg.to_dict()) if built.primary else None  # <run>/tb/
        if self.tracker is not None:
            closing.callback(self.tracker.close)
        self.agreement = Agreement()
        self.since = {"time": time.time(), "step": self.step, "grad_norm": None}
        self.last_save = time.time()
        self.last_train_loss: float | None = None
        self.in_loop_other = 0.0

    def run(self) -> None:
        pending_loss = None  # loss of the step before the one in flight: checked without stalling
        t_loop = time.time()
        while self.step < self.total:
            self.state, metrics = self.built.train_step(self.state, self.built.place(self.built.batches[self.step]))
            self.since["grad_norm"] = metrics.get("grad_norm")
            if self.step == self.start_step:
                self.last_train_loss = float(metrics["loss"])  # the first step in a process includes compilation
                _check_finite(self.step + 1, self.last_train_loss)
                self.clock.timing["compile_s"] = time.time() - t_loop
            elif pending_loss is not None:
                self.last_train_loss = float(pending_loss)
                _check_finite(self.step, self.last_train_loss)
            pending_loss = metrics["loss"]
            self.step += 1
            self._after_step(pending_loss)
        loop_s = time.time() - t_loop
        with self.clock.counting("ckpt_s"):
            self.ckpts.mngr.wait_until_finished()
        self.clock.timing["train_s"] = max(0.0, loop_s - self.in_loop_other - self.clock.timing["compile_s"])
        if not self.curve or self.curve[-1]["step"] != self.total:
            self.record_eval(self.total, self.last_train_loss)

    def _after_step(self, pending_loss) -> None:
        """The hooks of one finished step: evaluation, fork and regular checkpoints, preemption."""
        step = self.step
        clock_due = bool(self.ckpt_minutes) and time.time() - self.last_save >= 60.0 * self.ckpt_minutes
        if clock_due:
            self.last_save = time.time()  # asked for once; with several processes it is saved a step later
        stop, clock_ckpt = self.agreement.vote(bool(self.preemption and self.preemption.requested), clock_due)
        stop = stop and step < self.total
        do_eval = step % self.eval_every == 0 or step == self.total
        do_ckpt = step % self.ckpt_every == 0 or step == self.total or clock_ckpt or stop
        if do_eval or do_ckpt or step in self.ckpts.fork_steps:
            self.last_train_loss = float(pending_loss)
            _check_finite(step, self.last_train_loss)
            t = time.time()
            if do_eval:
                self.record_eval(step, self.last_train_loss)
            self._save(step, do_ckpt)
            self.in_loop_other += time.time() - t
            self.log(f"step {step}/{self.total} train_loss {self.last_train_loss:.4f}")
        if stop:
            self.ckpts.mngr.wait_until_finished()
            raise Preempted(step)

    def _save(self, step: int, regular: bool) -> None:
        import orbax.checkpoint as ocp  # heavy: loaded with the training stack, not with this module

        if step in self.ckpts.fork_steps and step not in self.ckpts.forks.all_steps():  # before the (async) regular one
            with self.clock.counting("ckpt_s"):
                self.ckpts.forks.save(step, args=ocp.args.StandardSave(self.state))
                self.ckpts.forks.wait_until_finished()
        if regular:
            with self.clock.counting("ckpt_s"):
                self.ckpts.mngr.save(step, args=ocp.args.StandardSave(self.state))
            self.last_save = time.time()

    def record_eval(self, step: int, train_loss: float | None) -> float:
        with self.clock.counting("eval_s"):
            loss = _held_out_loss(self.built.eval_step, self.state, self.built.held_out, self.built.place)
        tokens = step * self.cfg.tokens_per_step
        self.curve.append({"step": step, "tokens": tokens, "compute": self.flops.six_n * tokens,
                           "loss": loss, "train_loss": train_loss, "lr": self.built.schedule(max(step - 1, 0))})
        if self.built.primary:
            self._write_curve(step, loss, train_loss)
        self.since.update(time=time.time(), step=step)
        return loss

    def _write_curve(self, step: int, loss: float, train_loss: float | None) -> None:
        frame = pd.DataFrame(self.curve)
        write_with(self.run_dir.curve_path, lambda p: frame.to_csv(p, index=False))
        moved = step > self.since["step"]
        rate = (step - self.since["step"]) * self.cfg.tokens_per_step / max(time.time() - self.since["time"], 1e-9)
        grad_norm = self.since["grad_norm"]
        self.tracker.log(step, {"loss/held_out": loss, "loss/train": train_loss, "lr": self.curve[-1]["lr"],
                                "grad_norm": None if grad_norm is None else float(grad_norm),
                                "tokens_per_sec": rate if moved else None,
                                "mfu": mfu(rate, self.cfg.model, self.cfg.data.seq_len, self.peak_all) if moved else None})


def _check_finite(step: int, loss_value: float) -> None:
    if not math.isfinite(loss_value):
        raise Diverged(step, loss_value)


def _final_metrics(run: RunDir, cfg: RunConfig, built: _Built, loop: _Loop, clock: _Clock) -> dict:
    import jax

    from medscale.data.loader import unique_train_tokens
    from medscale.data.token_store import events_per_token

    timing, L = clock.timing, cfg.data.seq_len
    steps_timed = max(0, loop.step - loop.start_step - 1)
    tokens_per_sec = steps_timed * cfg.tokens_per_step / timing["train_s"] if steps_timed and timing["train_s"] > 0 else None
    peak, peak_source = device_peak_flops()
    tokens = cfg.train.steps * cfg.tokens_per_step
    per_token = events_per_token(cfg.data.token_dir)
    counts = param_counts(cfg.model)
    unique = unique_train_tokens(cfg.data.token_dir, "train", L, cfg.data.fraction)
    return {
        "loss": loop.curve[-1]["loss"],
        "train_loss": loop.last_train_loss,
        "params": counted_params(cfg.model, cfg.param_count),
        "param_count": cfg.param_count,
        "params_non_embedding": counts.non_embedding,
        "params_total": counts.total,
        "tokens": tokens,
        # Unique tokens U of the windows the run draws from; epochs > 1 means it repeated data.
        "unique_tokens": unique,
        "epochs": tokens / unique, "train_fraction": cfg.data.fraction,
        "lr_multiplier": cfg.train.lr_multiplier,
        "events": tokens * per_token if per_token else None,   # tokens seen x events per token (manifest)
        "steps": cfg.train.steps,
        "compute": loop.flops.six_n * tokens,  # C = 6ND under the run's parameter convention
        "flops_full": loop.flops.full * tokens,
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu(tokens_per_sec, cfg.model, L, peak * built.n_devices) if tokens_per_sec else None,
        "peak_flops": peak * built.n_devices,
        "peak_source": peak_source,
        "devices": built.n_devices,
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "resumed_from_step": loop.start_step,
        # a WSD branch: the step of its trunk it started from (None: trained from step 0)
        **({"forked_at_step": _forked_at(run)} if cfg.train.fork else {}),
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
    grace = float(run.run_config().checkpoint.grace_seconds or DEFAULT_GRACE_S)
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
