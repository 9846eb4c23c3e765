"""Ray scheduling of a sweep: one Ray task per run, local by default or on a cluster (`address`).

The scheduler holds no state that matters: each run's folder does (status, lease, checkpoints).
So a relaunch after a crash recomputes the same run ids, skips finished runs, resumes partial ones,
and waits for runs another live launch holds. Ray retries a task whose worker or node died
(`max_retries`); the retry resumes from the run's last checkpoint. A run that fails in our own code
is retried by this loop up to the spec's `retries`.

A run with `hosts` > 1 is a gang of processes instead (scaling/gang.py: a placement group, one actor
per process), driven from this loop too: its processes' refs are waited on like tasks, and a gang
one of whose processes died is torn down and restarted from the last checkpoint. A run stopped by
SIGTERM ("preempted", checkpoint saved) goes back in the queue without counting as a failure.
A WSD branch (scaling/wsd.py) waits in the queue until its trunk has written its fork checkpoint, and
starts as soon as it has, while the trunk trains on.

A local Ray (no `address`) is started in a session of its own by a watcher process (runtime.LocalRayHead),
which ends it with this process however this process ends: a signal to the driver's process group (Ctrl-C,
`timeout`) reaches the driver alone, which unwinds (gangs torn down, leases released) while Ray still
answers, and kill -9 of the driver leaves no Ray agent or worker behind.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from medscale.scaling.gang import GangRun
from medscale.scaling.runtime import LocalRayHead, malloc_env, process_shape
from medscale.scaling.store import FINAL_STATES, STALE_AFTER_S, RunDir, RunStore
from medscale.scaling.wsd import fork_checkpoint, fork_of, trained_steps



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
    """The runtime_env of run tasks: malloc settings for the worker's start (scaling/runtime.py) and the
    process shape, which keeps workers set up for different shapes apart."""
    cores, devices, accelerator = process_shape(cpus, host_devices, on_accelerator)
    shape = f"cpus={cores},host_devices={devices},accelerator={int(accelerator)}"
    return {"env_vars": {**malloc_env(), "MEDSCALE_WORKER_SHAPE": shape}}


def _run_task(run_path: str, cpus: int, host_devices: int | None, stale_after: float, on_accelerator: bool) -> str:
    """Body of the Ray task, in a worker process of this shape (worker_env): the first task pins it and
    sets XLA's host-device flag before JAX is imported; later ones find it set up."""
    global _worker_shape
    started = time.time()
    from medscale.scaling.runtime import configure_process

    shape = process_shape(cpus, host_devices, on_accelerator)
    if _worker_shape not in (None, shape):
        raise RuntimeError(f"this Ray worker was set up for (cpus, host_devices, accelerator) {_worker_shape}, "
                           f"not {shape}: runs of another shape need their own runtime_env (worker_env)")
    configure_process(cores=None if on_accelerator else cpus, host_devices=shape[1])
    _worker_shape = shape
    from medscale.scaling.train import execute_run

    return execute_run(RunDir(Path(run_path)), stale_after=stale_after, process_started=started)


def run_flops(run: RunDir) -> float:
    """Full FLOPs this run trains (a WSD branch: only its cooldown)."""
    from medscale.models.config import ModelConfig
    from medscale.scaling.flops import flops_per_token

    cfg = run.config()
    share = trained_steps(cfg) / max(1, cfg["train"]["steps"])
    per_token = flops_per_token(ModelConfig.from_dict(cfg["model"]), cfg["data"]["seq_len"]).full
    return per_token * cfg["train"]["tokens"] * share


def branch_forks(run_dirs: list[RunDir]) -> dict[str, tuple[str, Path]]:
    """run id -> (its trunk's run id, its fork checkpoint) for the WSD branches among `run_dirs`."""
    forks = {}
    for run in run_dirs:
        try:
            cfg = run.config()
        except Exception:  # noqa: BLE001 - a damaged config fails in the run itself, where it is recorded
            continue
        if (fork := fork_of(cfg)) is not None:
            forks[run.run_id] = (fork[0], fork_checkpoint(run.path, cfg))
    return forks


def next_ready(queue: deque, active: set[str], forks: dict[str, tuple[str, Path]]) -> RunDir | None:
    """Take the first run of `queue` that may start now. A WSD branch (in `forks`) may start once its
    trunk's fork checkpoint exists (orbax gives it its final name only once complete), or once its trunk
    is no longer active in this sweep (finished, failed for good, or not part of it): it then trains from
    step 0, which computes the same (scaling/wsd.py)."""
    for run in queue:
        fork = forks.get(run.run_id)
        if fork is None or fork[0] not in active or fork[1].is_dir():
            queue.remove(run)
            return run
    return None


_local_head: LocalRayHead | None = None  # the local Ray this process started (runtime.LocalRayHead)


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray; returns whether we started a local instance (and so must shut it down: stop_ray).
    A local one runs in its own session under a watcher that ends it with this process (runtime.LocalRayHead)."""
    global _local_head
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.update(malloc_env())  # local processes inherit it; run tasks also get it in their runtime_env
    if not address:
        stop_ray()  # a head left by a caller that only called ray.shutdown()
        _local_head = LocalRayHead(num_cpus or os.cpu_count() or 1, os.environ.get("MEDSCALE_RAY_TMP", "/tmp/ray"))
        if _local_head.auth_mode == "token" and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray turned token authentication on for its new head (as ray.init does locally); this process read
            # the mode when it imported ray, so switch it on here the way ray.init does for its own head
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
    try:
        with keeping_signal_handlers():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address=_local_head.address, log_to_driver=False, configure_logging=False)
    except BaseException:
        stop_ray()
        raise
    return not address


def stop_ray() -> None:
    """Leave Ray, and end the local Ray this process started, if any."""
    global _local_head
    import ray

    ray.shutdown()
    if _local_head is not None:
        _local_head.stop()
        _local_head = None


@contextlib.contextmanager
def keeping_signal_handlers():
    """ray.init replaces the driver's SIGTERM handler (in Python, then natively in its core worker, which
    dumps a stack and aborts); put the caller's handlers back afterwards, so that SIGTERM and SIGINT
    unwind as the caller chose (leases released, Ray shut down, a hint that a rerun resumes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def refuse_infeasible(cpus: int, gpus: float, tpus: int, hosts: int = 1) -> None:
    """Refuse (UserError, exit 2) a run size the live nodes of the cluster cannot hold: Ray would keep such a
    task pending forever, and a gang's placement group too (the sweep sat at "1 running"). A gang of `hosts`
    processes needs that many bundles, one per process, spread over the nodes as they fit. (An autoscaling
    cluster's future nodes are not seen: start them first.)"""
    import ray

    from medscale.scaling.errors import UserError

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


def run_sweep(store: RunStore, run_dirs: list[RunDir], *, cpus: int = 1, gpus: float = 0, tpus: int = 0,
              host_devices: int | None = None, hosts: int = 1, retries: int = 2, address: str | None = None,
              max_concurrent: int | None = None, on_progress: Callable[[SweepProgress], None] | None = None,
              stale_after: float = STALE_AFTER_S, ray_max_retries: int = 3) -> pd.DataFrame:
    """Run every run in `run_dirs` not yet finished; returns the results table.

    cpus, gpus, tpus and host_devices are per process; a run is `hosts` processes (one per host)."""
    import ray

    started_here = start_ray(address, None)
    inflight: dict = {}  # ref -> (run, its GangRun or None for a one-process task)
    try:
        refuse_infeasible(cpus, gpus, tpus, hosts)
        mark_stale(store, run_dirs, stale_after)
        cluster_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        limit = max_concurrent or max(1, cluster_cpus // max(1, cpus * hosts))
        resources = {"TPU": tpus} if tpus else None
        # a gang member's malloc settings must be in place when its process starts (scaling/runtime.py); run
        # tasks get theirs in worker_env
        gang_env = {"env_vars": malloc_env()} if address else None
        task = ray.remote(max_calls=1 if (gpus or tpus) else WORKER_MAX_CALLS)(_run_task).options(
            num_cpus=cpus, num_gpus=gpus, resources=resources,
            runtime_env=worker_env(cpus, host_devices, bool(gpus or tpus)),
            max_retries=ray_max_retries, retry_exceptions=False)

        progress = SweepProgress(total=len(run_dirs))
        flops = {r.run_id: run_flops(r) for r in run_dirs}
        progress.flops_total = sum(flops.values())
        queue: deque[RunDir] = deque()
        forks = branch_forks(run_dirs)
        # longest first: fewer idle cores at the end of the sweep, and the ETA (FLOP rate) settles early;
        # a WSD trunk is the longest of its family, so it starts before the branches that wait for it
        for run in sorted(run_dirs, key=lambda r: -flops[r.run_id]):
            status = run.status()
            if status["state"] in FINAL_STATES:
                progress.done += status["state"] == "done"
                progress.diverged += status["state"] == "diverged"
                progress.flops_total -= flops[run.run_id]
            elif status["state"] == "failed" and int(status.get("attempts", 0)) > retries:
                progress.failed += 1
            else:
                queue.append(run)
        held_elsewhere: list[RunDir] = []

        def n_running() -> int:  # a gang is one run however many refs it has
            return len({run.run_id for run, _ in inflight.values()})

        def active() -> set[str]:  # runs of this sweep that are queued, running, or held by another launch
            return ({r.run_id for r in queue} | {r.run_id for r, _ in inflight.values()}
                    | {r.run_id for r in held_elsewhere})

        def report() -> None:
            progress.running = n_running() + len(held_elsewhere)
            if on_progress:
                on_progress(progress)

        def finish(run: RunDir, state: str) -> None:
            if state == "done":
                progress.done += 1
                progress.flops_done += flops[run.run_id]
            elif state == "diverged":
                progress.diverged += 1
            elif state == "leased":
                held_elsewhere.append(run)
                return
            elif state == "preempted":  # checkpoint saved on SIGTERM: resume it, not a failure
                queue.append(run)
                return
            else:
                status = run.status()
                if status["state"] == "running" and not run.lease_is_live(stale_after):
                    run.set_status("failed", error=status.get("error") or "worker died (Ray gave up retrying)")
                if int(run.status().get("attempts", 0)) <= retries:
                    queue.append(run)
                else:
                    progress.failed += 1
            store.write_results()

        report()
        while queue or inflight or held_elsewhere:
            while queue and n_running() < limit:
                run = next_ready(queue, active(), forks)  # a WSD branch waits for its fork checkpoint
                if run is None:
                    break
                if run.state() in FINAL_STATES:
                    continue
                if hosts > 1:
                    gang = GangRun(run, hosts=hosts, cpus=cpus, gpus=gpus, tpus=tpus, host_devices=host_devices,
                                   stale_after=stale_after, restarts=ray_max_retries,
                                   runtime_env=gang_env)
                    inflight.update({ref: (run, gang) for ref in gang.refs})
                else:
                    ref = task.remote(str(run.path.absolute()), cpus, host_devices, stale_after, bool(gpus or tpus))
                    inflight[ref] = (run, None)
            report()
            if inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref not in inflight:
                        continue  # a gang's ref dropped when the gang ended or restarted
                    run, gang = inflight.pop(ref)
                    if gang is not None:
                        state = gang.resolve(ref)
                        for old in [r for r, (_, g) in inflight.items() if g is gang and r not in gang.refs]:
                            del inflight[old]  # refs of a torn-down attempt
                        if state is None:
                            inflight.update({r: (run, gang) for r in gang.refs if r not in gang.results})
                            continue
                        for r in gang.refs:
                            inflight.pop(r, None)
                        finish(run, state)
                        continue
                    try:
                        state = ray.get(ref)
                    except Exception:  # failure already recorded by the task, or the worker died
                        state = "failed"
                    finish(run, state)
            else:
                time.sleep(1.0)
            for run in list(held_elsewhere):
                state = run.state()
                if state in FINAL_STATES:
                    held_elsewhere.remove(run)
                    finish(run, state)
                elif not run.lease_is_live(stale_after):
                    held_elsewhere.remove(run)
                    queue.append(run)
        report()
        return store.write_results()
    finally:
        for gang in {id(g): g for _, g in inflight.values() if g is not None}.values():
            gang.teardown()  # interrupted: leave no processes or reserved bundles behind
        if started_here:
            stop_ray()
