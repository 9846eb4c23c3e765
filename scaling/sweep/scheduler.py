"""Ray scheduling of a sweep: one Ray task per run, local by default or on a cluster (`address`).

The scheduler holds no state that matters: each run's folder does (status, lease, checkpoints).
So a relaunch after a crash recomputes the same run ids, skips finished runs, resumes partial ones,
and waits for runs another live launch holds. Ray retries a task whose worker or node died
(`max_retries`); the retry resumes from the run's last checkpoint. A run that fails in our own code
is retried by this loop up to the spec's `retries`.

A run with `hosts` > 1 is a gang of processes instead (scaling/sweep/gang.py: a placement group, one actor
per process), driven from this loop too: its processes' refs are waited on like tasks, and a gang
one of whose processes died is torn down and restarted from the last checkpoint. A run stopped by
SIGTERM ("preempted", checkpoint saved) goes back in the queue without counting as a failure.
A WSD branch (scaling/sweep/wsd.py) waits in the queue until its trunk has written its fork checkpoint, and
starts as soon as it has, while the trunk trains on.

The loop is a `SweepRun`: its state (the queue, the refs in flight, the runs another launch holds, the WSD
forks, the progress) in one object, each step a method; `run_sweep` builds one and runs it.

Ray comes from `ray_session` (scaling/sweep/ray_session.py): a caller's own session is used as it is, else a
local Ray (no `address`) is started for the sweep and ended after it. A local Ray runs in a session of its own
under a watcher process (runtime.LocalRayHead), which ends it with this process however this process ends: a
signal to the driver's process group (Ctrl-C, `timeout`) reaches the driver alone, which unwinds (gangs torn
down, leases released) while Ray still answers, and kill -9 of the driver leaves no Ray agent or worker behind.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from medscale.scaling.errors import UserError
from medscale.scaling.plan.flops import flops_per_token
from medscale.scaling.run.runtime import configure_process, malloc_env, process_shape
from medscale.scaling.sweep.gang import GangRun
# start_ray, stop_ray and keeping_signal_handlers are also imported from here (scaling/demo.py, benchmarks)
from medscale.scaling.sweep.ray_session import keeping_signal_handlers, ray_session, start_ray, stop_ray  # noqa: F401
from medscale.scaling.sweep.store import FINAL_STATES, STALE_AFTER_S, RunDir, RunStore
from medscale.scaling.sweep.wsd import fork_checkpoint


@dataclass
class SweepProgress:
    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    diverged: int = 0
    flops_total: float = 0.0
    flops_done: float = 0.0
    started: float = field(default_factory=time.time)

    def eta_s(self) -> float | None:
        if self.flops_done <= 0:
            return None
        rate = self.flops_done / (time.time() - self.started)
        return (self.flops_total - self.flops_done) / rate

    def line(self) -> str:
        eta = self.eta_s()
        eta_s = "--" if eta is None else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        return (f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed, "
                f"{self.diverged} diverged, ETA {eta_s}")


# On CPUs a Ray worker trains up to this many runs, one after another: its imports and XLA backend start are
# paid once, not once per run (about 2.5 s of each of the demo's 5-10 s runs). Pinning and the XLA host-device
# flag must be set before JAX starts, so workers are kept apart by them (worker_env): Ray reuses a worker only
# for tasks with the same runtime_env. The cap bounds what a long-lived worker can accumulate (compiled
# programs, a heap that is never trimmed). A run on GPUs or TPUs gets a fresh worker (max_calls 1, Ray's own
# default for GPU tasks): JAX binds to the accelerators of the worker's first task and keeps their memory.
WORKER_MAX_CALLS = 32
_worker_shape: tuple | None = None  # the process_shape this worker was set up for


def worker_env(cpus: int, host_devices: int | None, on_accelerator: bool) -> dict:
    """The runtime_env of run tasks: malloc settings for the worker's start (scaling/run/runtime.py) and the
    process shape, which keeps workers set up for different shapes apart."""
    cores, devices, accelerator = process_shape(cpus, host_devices, on_accelerator)
    shape = f"cpus={cores},host_devices={devices},accelerator={int(accelerator)}"
    return {"env_vars": {**malloc_env(), "MEDSCALE_WORKER_SHAPE": shape}}


def _run_task(run_path: str, cpus: int, host_devices: int | None, stale_after: float, on_accelerator: bool) -> str:
    """Body of the Ray task, in a worker process of this shape (worker_env): the first task pins it and
    sets XLA's host-device flag before JAX is imported; later ones find it set up."""
    global _worker_shape
    started = time.time()
    shape = process_shape(cpus, host_devices, on_accelerator)
    if _worker_shape not in (None, shape):
        raise RuntimeError(f"this Ray worker was set up for (cpus, host_devices, accelerator) {_worker_shape}, "
                           f"not {shape}: runs of another shape need their own runtime_env (worker_env)")
    configure_process(cores=None if on_accelerator else cpus, host_devices=shape[1])
    _worker_shape = shape
    from medscale.scaling.run.train import execute_run  # imports JAX: only once configure_process has pinned us

    return execute_run(RunDir(Path(run_path)), stale_after=stale_after, process_started=started)


def run_flops(run: RunDir) -> float:
    """Full FLOPs this run trains (a WSD branch: only its cooldown)."""
    cfg = run.run_config()
    per_token = flops_per_token(cfg.model, cfg.data.seq_len).full
    return per_token * cfg.train.tokens * cfg.trained_steps / max(1, cfg.train.steps)


def branch_forks(run_dirs: list[RunDir]) -> dict[str, tuple[str, Path]]:
    """run id -> (its trunk's run id, its fork checkpoint) for the WSD branches among `run_dirs`."""
    forks = {}
    for run in run_dirs:
        try:
            cfg = run.run_config()
        except Exception:  # noqa: BLE001 - a damaged config fails in the run itself, where it is recorded
            continue
        if (fork := cfg.train.fork) is not None:
            forks[run.run_id] = (fork[0], fork_checkpoint(run.path, cfg))
    return forks


def next_ready(queue: deque, active: set[str], forks: dict[str, tuple[str, Path]]) -> RunDir | None:
    """Take the first run of `queue` that may start now. A WSD branch (in `forks`) may start once its
    trunk's fork checkpoint exists (orbax gives it its final name only once complete), or once its trunk
    is no longer active in this sweep (finished, failed for good, or not part of it): it then trains from
    step 0, which computes the same (scaling/sweep/wsd.py)."""
    for run in queue:
        fork = forks.get(run.run_id)
        if fork is None or fork[0] not in active or fork[1].is_dir():
            queue.remove(run)
            return run
    return None


def refuse_infeasible(cpus: int, gpus: float, tpus: int, hosts: int = 1) -> None:
    """Refuse (UserError, exit 2) a run size the live nodes of the cluster cannot hold: Ray would keep such a
    task pending forever, and a gang's placement group too (the sweep sat at "1 running"). A gang of `hosts`
    processes needs that many bundles, one per process, spread over the nodes as they fit. (An autoscaling
    cluster's future nodes are not seen: start them first.)"""
    import ray  # Ray is imported where used: about 1 s, and the CLI's fast paths import this module

    need = {"CPU": cpus, "GPU": gpus, "TPU": tpus}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = [min(int(node.get(k, 0) // v) for k, v in need.items() if v) if any(need.values()) else hosts
            for node in nodes]
    if sum(fits) >= hosts:
        return
    largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in need}
    asked = ", ".join(f"{k.lower()}s: {v:g}" for k, v in need.items() if v)
    offer = ", ".join(f"{k.lower()}s: {v:g}" for k, v in largest.items())
    total = ", ".join(f"{k.lower()}s: {sum(node.get(k, 0) for node in nodes):g}" for k in need)
    if hosts == 1:
        raise UserError(f"resources: each run asks for {asked}, but no node of the Ray cluster ({len(nodes)} node(s)) "
                        f"offers that (the largest offer {offer}). Lower resources in the spec, or add such a node.")
    raise UserError(f"resources.hosts: each run is a gang of {hosts} processes asking for {asked} each, but the Ray "
                    f"cluster ({len(nodes)} node(s); in all {total}; the largest node {offer}) holds at most "
                    f"{sum(fits)} such process(es) at once, so the gang would wait forever. Lower resources.hosts "
                    f"(or the per-process resources), or add nodes and pass --address.")


def mark_stale(store: RunStore, run_dirs: list[RunDir], stale_after: float) -> None:
    """Mark "stale", with the reason, the store's runs outside this launch whose process died while they ran
    (state running, no live lease): nothing is training them and this launch will not resume them."""
    mine = {run.run_id for run in run_dirs}
    for run in store.runs():
        if run.run_id in mine or run.state() != "running" or run.lease_is_live(stale_after):
            continue
        try:
            sweep = run.config().get("sweep")
        except Exception:  # noqa: BLE001 - a damaged config: the run is still not running
            sweep = None
        run.set_status("stale", error=f"its process died while it ran and this launch does not include it; rerun "
                                      f"sweep {sweep!r} with its own spec to resume it from its last checkpoint")


def run_task(cpus: int, gpus: float, tpus: int, host_devices: int | None, ray_max_retries: int):
    """The Ray remote function that trains one one-process run (`_run_task`), sized and placed for this sweep."""
    import ray

    resources = {"TPU": tpus} if tpus else None
    return ray.remote(max_calls=1 if (gpus or tpus) else WORKER_MAX_CALLS)(_run_task).options(
        num_cpus=cpus, num_gpus=gpus, resources=resources,
        runtime_env=worker_env(cpus, host_devices, bool(gpus or tpus)),
        max_retries=ray_max_retries, retry_exceptions=False)


class SweepRun:
    """One launch of a sweep, driven to its end by `run()`.

    Its state: `queue` (runs still to start, longest first; a run goes back in after a retryable failure or a
    preemption), `inflight` (Ray ref -> (run, its GangRun, or None for a one-process task); a gang has one ref
    per process), `held_elsewhere` (runs another live launch holds: watched until they end or their lease
    lapses), `forks` (a WSD branch -> its trunk and fork checkpoint), `flops` (per run) and `progress`."""

    def __init__(self, store: RunStore, run_dirs: list[RunDir], *, cpus: int = 1, gpus: float = 0, tpus: int = 0,
                 host_devices: int | None = None, hosts: int = 1, retries: int = 2, address: str | None = None,
                 max_concurrent: int | None = None, on_progress: Callable[[SweepProgress], None] | None = None,
                 stale_after: float = STALE_AFTER_S, ray_max_retries: int = 3) -> None:
        self.store, self.run_dirs = store, run_dirs
        self.cpus, self.gpus, self.tpus, self.host_devices, self.hosts = cpus, gpus, tpus, host_devices, hosts
        self.retries, self.address, self.max_concurrent = retries, address, max_concurrent
        self.on_progress, self.stale_after, self.ray_max_retries = on_progress, stale_after, ray_max_retries
        self.queue: deque[RunDir] = deque()
        self.inflight: dict = {}
        self.held_elsewhere: list[RunDir] = []
        self.forks: dict[str, tuple[str, Path]] = {}
        self.flops: dict[str, float] = {}
        self.progress = SweepProgress(total=len(run_dirs))
        self.limit = 1  # runs at once (set by `start` from the cluster's CPUs)
        self.task = None  # the Ray remote function of one-process runs (run_task)
        self.gang_env: dict | None = None

    # the whole launch
    def run(self) -> pd.DataFrame:
        """Run every run not yet finished (in this process's Ray session, else one of its own); returns the
        results table. However it ends, no gang of this launch is left running."""
        with ray_session(self.address):
            try:
                self.start()
                self.report()
                while self.queue or self.inflight or self.held_elsewhere:
                    self.step()
                self.report()
                return self.store.write_results()
            finally:
                self.teardown_gangs()

    def start(self) -> None:
        """Check the cluster can hold a run, mark dead runs outside this launch stale, size the launch and fill
        the queue."""
        import ray

        refuse_infeasible(self.cpus, self.gpus, self.tpus, self.hosts)
        mark_stale(self.store, self.run_dirs, self.stale_after)
        cluster_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        self.limit = self.max_concurrent or max(1, cluster_cpus // max(1, self.cpus * self.hosts))
        # a gang member's malloc settings must be in place when its process starts (scaling/run/runtime.py); run
        # tasks get theirs in worker_env
        self.gang_env = {"env_vars": malloc_env()} if self.address else None
        self.task = run_task(self.cpus, self.gpus, self.tpus, self.host_devices, self.ray_max_retries)
        self.progress = SweepProgress(total=len(self.run_dirs))  # the ETA's clock starts here, once Ray is up
        self.fill_queue()

    def fill_queue(self) -> None:
        """Count the runs already final, and queue the others, longest first: fewer idle cores at the end of the
        sweep, and the ETA (FLOP rate) settles early; a WSD trunk is the longest of its family, so it starts
        before the branches that wait for it."""
        self.flops = {r.run_id: run_flops(r) for r in self.run_dirs}
        self.progress.flops_total = sum(self.flops.values())
        self.forks = branch_forks(self.run_dirs)
        for run in sorted(self.run_dirs, key=lambda r: -self.flops[r.run_id]):
            status = run.status()
            if status["state"] in FINAL_STATES:
                self.progress.done += status["state"] == "done"
                self.progress.diverged += status["state"] == "diverged"
                self.progress.flops_total -= self.flops[run.run_id]
            elif status["state"] == "failed" and int(status.get("attempts", 0)) > self.retries:
                self.progress.failed += 1
            else:
                self.queue.append(run)

    def step(self) -> None:
        """One turn of the loop: start what may start, wait (at most 1 s) for a run to end, and look at the
        runs held by another launch."""
        self.submit_ready()
        self.report()
        if self.inflight:
            self.collect(timeout=1.0)
        else:
            time.sleep(1.0)
        self.check_held_elsewhere()

    # starting runs
    def submit_ready(self) -> None:
        """Start queued runs while fewer than `limit` run; a WSD branch waits for its fork checkpoint."""
        while self.queue and self.n_running() < self.limit:
            run = next_ready(self.queue, self.active(), self.forks)
            if run is None:
                break
            if run.state() in FINAL_STATES:
                continue
            self.submit(run)

    def submit(self, run: RunDir) -> None:
        """Start one run: a gang of `hosts` processes, or one Ray task."""
        if self.hosts > 1:
            gang = GangRun(run, hosts=self.hosts, cpus=self.cpus, gpus=self.gpus, tpus=self.tpus,
                           host_devices=self.host_devices, stale_after=self.stale_after,
                           restarts=self.ray_max_retries, runtime_env=self.gang_env)
            self.inflight.update({ref: (run, gang) for ref in gang.refs})
        else:
            ref = self.task.remote(str(run.path.absolute()), self.cpus, self.host_devices, self.stale_after,
                                   bool(self.gpus or self.tpus))
            self.inflight[ref] = (run, None)

    # runs ending
    def collect(self, timeout: float) -> None:
        """Wait up to `timeout` s for a ref in flight to be ready, and take what it says."""
        import ray

        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        for ref in ready:
            if ref not in self.inflight:
                continue  # a gang's ref dropped when the gang ended or restarted
            run, gang = self.inflight.pop(ref)
            state = self.task_state(ref) if gang is None else self.gang_state(ref, run, gang)
            if state is not None:
                self.finish(run, state)

    @staticmethod
    def task_state(ref) -> str:
        """How a one-process run ended: its task's return value, or "failed"."""
        import ray

        try:
            return ray.get(ref)
        except Exception:  # failure already recorded by the task, or the worker died
            return "failed"

    def gang_state(self, ref, run: RunDir, gang: GangRun) -> str | None:
        """How a gang ended, once it has for good (its refs leave `inflight`); None while it runs on, perhaps
        restarted, with the refs of its new attempt in flight."""
        state = gang.resolve(ref)
        for old in [r for r, (_, g) in self.inflight.items() if g is gang and r not in gang.refs]:
            del self.inflight[old]  # refs of a torn-down attempt
        if state is None:
            self.inflight.update({r: (run, gang) for r in gang.refs if r not in gang.results})
            return None
        for r in gang.refs:
            self.inflight.pop(r, None)
        return state

    def finish(self, run: RunDir, state: str) -> None:
        """Count a run that ended in `state`, or put it back: held by another launch (watched), preempted
        (queued again: its checkpoint is saved, not a failure), failed (retried or failed for good)."""
        if state == "done":
            self.progress.done += 1
            self.progress.flops_done += self.flops[run.run_id]
        elif state == "diverged":
            self.progress.diverged += 1
        elif state == "leased":
            self.held_elsewhere.append(run)
            return
        elif state == "preempted":
            self.queue.append(run)
            return
        else:
            self.retry_or_fail(run)
        self.store.write_results()

    def retry_or_fail(self, run: RunDir) -> None:
        """A failed run: record a worker's death the run could not record, then queue it again while it has
        attempts left (`retries`), else count it failed."""
        status = run.status()
        if status["state"] == "running" and not run.lease_is_live(self.stale_after):
            run.set_status("failed", error=status.get("error") or "worker died (Ray gave up retrying)")
        if int(run.status().get("attempts", 0)) <= self.retries:
            self.queue.append(run)
        else:
            self.progress.failed += 1

    def check_held_elsewhere(self) -> None:
        """A run another launch held: count it once it is final; queue it once its lease lapsed."""
        for run in list(self.held_elsewhere):
            state = run.state()
            if state in FINAL_STATES:
                self.held_elsewhere.remove(run)
                self.finish(run, state)
            elif not run.lease_is_live(self.stale_after):
                self.held_elsewhere.remove(run)
                self.queue.append(run)

    # state
    def n_running(self) -> int:
        """Runs in flight (a gang is one run however many refs it has)."""
        return len({run.run_id for run, _ in self.inflight.values()})

    def active(self) -> set[str]:
        """Runs of this sweep that are queued, running, or held by another launch."""
        return ({r.run_id for r in self.queue} | {r.run_id for r, _ in self.inflight.values()}
                | {r.run_id for r in self.held_elsewhere})

    def report(self) -> None:
        self.progress.running = self.n_running() + len(self.held_elsewhere)
        if self.on_progress:
            self.on_progress(self.progress)

    def teardown_gangs(self) -> None:
        """Interrupted: leave no processes or reserved bundles of a gang in flight behind."""
        for gang in {id(g): g for _, g in self.inflight.values() if g is not None}.values():
            gang.teardown()


def run_sweep(store: RunStore, run_dirs: list[RunDir], *, cpus: int = 1, gpus: float = 0, tpus: int = 0,
              host_devices: int | None = None, hosts: int = 1, retries: int = 2, address: str | None = None,
              max_concurrent: int | None = None, on_progress: Callable[[SweepProgress], None] | None = None,
              stale_after: float = STALE_AFTER_S, ray_max_retries: int = 3) -> pd.DataFrame:
    """Run every run in `run_dirs` not yet finished; returns the results table (a `SweepRun`).

    cpus, gpus, tpus and host_devices are per process; a run is `hosts` processes (one per host)."""
    return SweepRun(store, run_dirs, cpus=cpus, gpus=gpus, tpus=tpus, host_devices=host_devices, hosts=hosts,
                    retries=retries, address=address, max_concurrent=max_concurrent, on_progress=on_progress,
                    stale_after=stale_after, ray_max_retries=ray_max_retries).run()
