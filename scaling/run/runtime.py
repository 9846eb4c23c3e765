"""Process set-up that must happen before JAX is imported: CPU pinning, host devices, compile cache,
and a malloc that keeps freed memory.

XLA ignores thread-count environment variables but respects the process's CPU affinity, so a run
that should use k cores is pinned to k cores before `import jax`. On CPU, sharding the batch over
one host device per core was 1.3-1.4x faster than one device using both cores.

XLA's CPU runtime allocates each execution's scratch buffer (hundreds of MB for a 5M-parameter
model) with malloc and frees it afterwards. glibc serves such sizes with a fresh mmap every time,
so every page is faulted in and zeroed by the kernel on every step: 233k page faults and ~500 ms
of system time per 1 s step. `keep_freed_memory` makes glibc keep one heap and never hand memory
back, so the scratch buffer is reused (1.5-1.7x training throughput on the 2-core CPU).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil

LOCK_DIR = Path(os.environ.get("MEDSCALE_CORE_LOCK_DIR", "/tmp/medscale-core-locks"))
_held_locks: list = []
_claimed: list[int] = []  # the cores this process pinned itself to (locked, or shared when none were free)


def user_cache_dir() -> Path:
    """Where medscale keeps caches that hold for this user on this machine (device peaks, memory
    plans): $MEDSCALE_CACHE_DIR, else $XDG_CACHE_HOME/medscale, else ~/.cache/medscale."""
    if os.environ.get("MEDSCALE_CACHE_DIR"):
        return Path(os.environ["MEDSCALE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medscale"


def compile_cache_dir() -> Path:
    """JAX's persistent compilation cache, shared by every run of this user on this kind of machine: a
    relaunch, another --out or a WSD branch with its trunk's shapes reuses the compiled step. Programs
    compiled for one processor's instruction set are kept apart from another's (a home directory that
    a cluster's nodes share)."""
    import hashlib

    from medscale.scaling.run.processor import processor

    cpu = processor()
    isa = hashlib.sha256(" ".join(cpu.isa).encode()).hexdigest()[:8]
    return user_cache_dir() / "jax-compile" / f"{cpu.kind}-{isa}"


def process_shape(cpus: int, host_devices: int | None, on_accelerator: bool) -> tuple:
    """What a training process fixes before JAX starts: (cores, XLA host devices, on accelerators). Host
    devices default to one per core, and there are none on accelerators."""
    return cpus, None if on_accelerator else (host_devices or cpus), on_accelerator


def jax_imported() -> bool:
    return "jax" in sys.modules


def claim_cores(n: int) -> list[int]:
    """Claim n free cores of this node with flock'd lock files (released when the process dies).

    Concurrent runs on one node, whoever launched them (Ray tasks, two sweeps, a shell), each get
    their own cores. Falls back to all allowed cores when fewer than n are free.
    """
    if len(_claimed) >= n > 0:  # a reused worker keeps the cores it pinned itself (and XLA's threads) to
        return _claimed[:n]
    allowed = sorted(os.sched_getaffinity(0))
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    claimed: list[int] = []
    locks = []
    for core in allowed:
        if len(claimed) == n:
            break
        f = open(LOCK_DIR / f"core{core}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        locks.append(f)
        claimed.append(core)
    if len(claimed) < n:  # too few free: share cores, holding none of them (a reused worker keeps sharing)
        for f in locks:
            f.close()
        claimed = allowed[:n] if len(allowed) >= n else allowed
    else:
        _held_locks.extend(locks)
    _claimed[:] = claimed
    return claimed


# mallopt(3) parameters, and the same settings as glibc tunables for processes yet to start
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1
MALLOC_TUNABLES = {"glibc.malloc.arena_max": 1, "glibc.malloc.mmap_max": 0,
                   "glibc.malloc.trim_threshold": _TRIM_THRESHOLD}
_malloc_configured = False


def malloc_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """{"GLIBC_TUNABLES": ...}: `env`'s tunables plus the ones `keep_freed_memory` sets.

    For processes started later (Ray workers): glibc reads these before any thread exists, which
    is the only moment that reliably covers every thread's allocations.
    """
    tunables = _glibc_tunables(env if env is not None else os.environ)
    tunables.update({k: str(v) for k, v in MALLOC_TUNABLES.items()})
    return {"GLIBC_TUNABLES": ":".join(f"{k}={v}" for k, v in tunables.items())}


def _glibc_tunables(env) -> dict[str, str]:
    return dict(item.split("=", 1) for item in env.get("GLIBC_TUNABLES", "").split(":") if "=" in item)


def started_with_malloc_env() -> bool:
    """Whether this process started with `malloc_env`'s tunables (glibc applied them at start-up).

    Call before `keep_freed_memory`, which adds them to os.environ for child processes.
    """
    tunables = _glibc_tunables(os.environ)
    return all(tunables.get(k) == str(v) for k, v in MALLOC_TUNABLES.items())


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed memory instead of returning it to the kernel.

    One arena (threads' arenas are capped at 64 MB and fall back to mmap above that), no mmap'd
    chunks, no trimming. This covers threads started afterwards (XLA's) only if no thread has
    made an arena of its own yet: a BLAS thread pool started by importing numpy or scipy does,
    and then about half of XLA's threads later share that capped arena (the 1M decoder trained
    0.75x as fast). So call this before anything imports numpy, or start the process with
    `malloc_env()` in its environment; child processes get the settings through GLIBC_TUNABLES.
    Returns False where libc is not glibc.
    """
    global _malloc_configured
    os.environ.update(malloc_env())
    if _malloc_configured:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    _malloc_configured = ok
    return ok


def configure_process(*, cores: int | None = None, host_devices: int | None = None,
                      compile_cache: bool = True, platform: str | None = None,
                      start_backend: bool = True) -> dict:
    """Pin to `cores` cores and ask XLA for `host_devices` CPU devices. Call before importing jax.

    `compile_cache`: use this node's persistent compile cache (compile_cache_dir), computed here, in
    the process that trains, so a Ray worker uses its own node's user and processor kind.

    Returns what was set, for the run's record. If jax is already imported the CPU-device count
    cannot change any more; pinning still applies to threads created later. `start_backend=False`
    leaves JAX's backend unstarted (a process of a multi-process job must join it first).
    """
    info: dict = {"malloc_keeps_freed_memory": keep_freed_memory()}
    if cores:
        chosen = claim_cores(cores)
        os.sched_setaffinity(0, chosen)
        info["cores"] = chosen
    if host_devices and not jax_imported():
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={host_devices}")
        os.environ["XLA_FLAGS"] = " ".join(flags)
        info["host_devices"] = host_devices
    if platform:
        os.environ["JAX_PLATFORMS"] = platform
    import jax

    if compile_cache:
        cache_dir = compile_cache_dir()
        cache_dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        info["compile_cache"] = str(cache_dir)
    if not start_backend:
        return info
    info["backend"] = jax.default_backend()
    info["devices"] = jax.device_count()
    return info



# The local Ray a sweep starts lives in a session of its own, under a watcher process that ends it with the
# driver. In the driver's session Ray's daemons shared its process group, so a signal to the group (Ctrl-C,
# `timeout`, a batch system's SIGTERM) killed the GCS before the driver could unwind (60 s on "Failed to
# connect to GCS", no resume hint), and after kill -9 of the driver its agents and workers lived on (parent 1).
HEAD_START_S = 180.0
HEAD_STOP_S = 30.0


class LocalRayHead:
    """A local Ray head owned by this process: `address` to ray.init, `stop()` to end it. The watcher (its own
    session) started it as a Ray driver of its own; it ends Ray and every process left in its session when
    this process closes the pipe or dies, however it dies (kill -9 included)."""

    def __init__(self, num_cpus: int, temp_dir: str) -> None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        self.log = Path(temp_dir) / "medscale-ray-head.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "medscale.scaling.run.runtime", "ray-head", str(num_cpus),
                                          temp_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True)
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], HEAD_START_S)
            line = self.proc.stdout.readline().decode() if ready else ""
        except BaseException:  # Ctrl-C while Ray starts: end the head now, not when the pipe is collected
            self.stop()
            raise
        self.address, _, self.auth_mode = line.strip().partition(" ")
        if not self.address:
            self.stop()
            tail = self.log.read_text(errors="replace")[-1500:]
            raise OSError(None, f"a local Ray did not start within {HEAD_START_S:.0f} s; this log ends: {tail}",
                          str(self.log))  # an environment failure: the CLI exits 1 naming the log

    def stop(self) -> None:
        """End the head and wait (bounded) until its processes are gone."""
        self.proc.stdin.close()  # the watcher's signal to end Ray
        if self.proc.poll() is None:
            try:
                self.proc.wait(HEAD_STOP_S)
            except subprocess.TimeoutExpired:  # the watcher hung: end its session ourselves
                _kill_session(self.proc.pid)
                self.proc.wait(5)
        self.proc.stdout.close()


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` but this one."""
    for pid in psutil.pids():
        try:
            if pid != os.getpid() and os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _without_cluster_services() -> None:
    """Ray's autoscaler monitor serves a cluster that grows, its log monitor a driver that prints its workers'
    logs; a local head of fixed size whose driver does not print them (log_to_driver=False) needs neither,
    and they cost 2-3 s of each start on 2 cores. ray.init has no option for them (`ray start` has:
    --no-monitor, --include-log-monitor), so this process sets them on the parameters ray.init builds (Ray is
    pinned in requirements.lock; tests/test_ray_session.py checks that neither process runs)."""
    from ray._private import parameter

    build = parameter.RayParams.__init__

    def without_monitors(self, *args, **kwargs):
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        build(self, *args, **kwargs)

    parameter.RayParams.__init__ = without_monitors


def _ray_head_main(num_cpus: int, temp_dir: str) -> None:
    """The watcher: start Ray, print its address, wait until the driver (our parent) closes our stdin or dies,
    then shut Ray down and end whatever is left of this session (agents and workers that outlive a raylet)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    driver = os.getppid()
    import ray  # here only: every run process imports this module before JAX, and Ray takes about 1 s

    _without_cluster_services()
    context = ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                       _temp_dir=temp_dir)
    # the driver must authenticate as this head does (Ray turns token authentication on for a local head)
    print(context.address_info["gcs_address"], os.environ.get("RAY_AUTH_MODE", ""), flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    while os.getppid() == driver:  # reparented: the driver died without closing the pipe (its fork holds it)
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 4096):
            break
    try:
        ray.shutdown()
    finally:
        _kill_session(os.getsid(0))


if __name__ == "__main__" and sys.argv[1:2] == ["ray-head"]:
    _ray_head_main(int(sys.argv[2]), sys.argv[3])
