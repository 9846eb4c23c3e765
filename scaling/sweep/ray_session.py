"""The Ray a driver works in: `with ray_session(address):` starts a local Ray (no `address`) or connects to a cluster,
and on leaving, by return, exception or Ctrl-C alike, ends what it started: the connection, and the local Ray with
its agents and workers. Ray already running in this process (a caller's own session) is used and left running.

A local Ray runs in a session of its own under a watcher process (runtime.LocalRayHead), which also ends it if
this process dies without unwinding (kill -9). It starts only what a local run needs: no dashboard, no usage
statistics (`_ray_head_main` in scaling/run/runtime.py).

`start_ray` / `stop_ray` are the same two halves for callers that cannot use a `with` block.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from medscale.scaling.run.runtime import LocalRayHead, malloc_env

_local_head: LocalRayHead | None = None  # the local Ray this process started (runtime.LocalRayHead)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[bool]:
    """Ray for the body of the `with`: a local Ray of `num_cpus` CPUs (default: all) without `address`, else the
    cluster at `address`. Yields whether this session started it (False: Ray was already initialized in this
    process, and is left as it was); what it started is stopped on leaving, however the body ends."""
    import ray  # Ray is imported where used: about 1 s, and the CLI's fast paths import this module

    if ray.is_initialized():
        yield False
        return
    start_ray(address, num_cpus)
    try:
        yield True
    finally:
        stop_ray()


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray; returns whether we started a local instance (and so must shut it down: stop_ray).
    A local one runs in its own session under a watcher that ends it with this process (runtime.LocalRayHead)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.update(malloc_env())  # local processes inherit it; run tasks also get it in their runtime_env
    if not address:
        _start_local_head(num_cpus)
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


def _start_local_head(num_cpus: int | None) -> None:
    global _local_head
    stop_ray()  # a head left by a caller that only called ray.shutdown()
    _local_head = LocalRayHead(num_cpus or os.cpu_count() or 1, os.environ.get("MEDSCALE_RAY_TMP", "/tmp/ray"))
    if _local_head.auth_mode == "token" and os.environ.get("RAY_AUTH_MODE") != "token":
        # Ray turned token authentication on for its new head (as ray.init does locally); this process read
        # the mode when it imported ray, so switch it on here the way ray.init does for its own head
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()


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
