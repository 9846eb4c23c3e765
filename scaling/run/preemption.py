"""SIGTERM as a preemption notice: finish the step, checkpoint, exit resumable within a grace period.

Preemptible TPUs and spot GPUs send SIGTERM and take the machine about 30 s later. The handler
only raises a flag; the training loop sees it after the step in flight, saves a checkpoint and
returns "preempted" (the CLI exits with EXIT_PREEMPTED, a scheduler requeues the run). Should the
step plus the save outlast the grace period, a timer ends the process anyway, exiting with the same
status: the last complete checkpoint is intact (orbax renames a checkpoint into place only once
written), so the run still resumes from there.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; what `medscale train` exits with when preempted
DEFAULT_GRACE_S = 25.0
_MARGIN_S = 2.0  # leave the process this long to die before the grace period ends


class PreemptionGuard:
    """Within `with`: SIGTERM sets `requested` and starts the grace timer (main thread only; elsewhere
    Python cannot install handlers and SIGTERM keeps its previous meaning)."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, on_expire: Callable[[], None] | None = None) -> None:
        self.grace_s = grace_s
        self.on_expire = on_expire
        self.requested = False
        self._previous = None
        self._timer: threading.Timer | None = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        self._timer = threading.Timer(max(0.5, self.grace_s - _MARGIN_S), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        try:
            if self.on_expire:
                self.on_expire()
        finally:
            os._exit(EXIT_PREEMPTED)

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
