"""One idea of an idempotent step, used for training runs, prepared datasets and downstream results.

A step is a folder named `<kind>-<hash>`: the kind says what it is (`decoder`, `encoder`, `simulator`,
`meds`, `eval`), the hash covers exactly the fields that define what it computes, named explicitly by
each kind (`identity(...)` below is given them, never a whole config minus a blacklist). Inside:

    status.jsonl   append-only history, one JSON object per change: {"state", "at", ...fields};
                   the last complete line is the current state (a torn last line, from a writer killed
                   mid-append, is ignored)
    lease.json     who is working on it now, with a heartbeat (only where two launches can race)

Relaunching computes the same names, skips what is `done` and resumes the rest; a lease keeps two
launches from doing the same step at once. Status fields accumulate: the current status is the merge
of every line, later lines winning, so `attempts` set when a run starts is still there when it fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from medscale.atomic import naming, read_json, write_json

HASH_LENGTH = 12
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def identity_hash(fields: dict, length: int = HASH_LENGTH) -> str:
    """The hash of a step's defining fields (a dict of exactly those fields)."""
    return hashlib.sha256(canonical(fields).encode()).hexdigest()[:length]


def pick(obj: dict, keys: Iterable[str]) -> dict:
    """The named keys of `obj` that are present: how a kind lists the fields that define it."""
    return {k: obj[k] for k in keys if k in obj}


def step_name(kind: str, fields: dict) -> str:
    if not _KIND.match(kind):
        raise ValueError(f"step kind {kind!r}: lower-case letters, digits and _ only")
    return f"{kind}-{identity_hash(fields)}"


class LeaseHeld(RuntimeError):
    """Another live process holds this step's lease."""


def _lease_live(info: dict | None, stale_after: float) -> bool:
    """A lease is live while its heartbeat is fresh, and its holder, if on this host, still exists."""
    if not info:
        return False
    if time.time() - float(info.get("heartbeat_at", 0)) >= stale_after:
        return False
    if info.get("host") == socket.gethostname() and info.get("pid"):
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def _read_lease(path: Path) -> dict | None:
    try:
        return read_json(path)
    except ValueError:  # torn or foreign: treat as no valid holder
        return {"token": None, "heartbeat_at": 0}


@dataclass
class Lease:
    path: Path
    token: str
    heartbeat_s: float
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def _beat(self) -> None:
        body = _read_lease(self.path) or {}
        if body.get("token") != self.token:
            return  # broken by someone else; do not resurrect
        body["heartbeat_at"] = time.time()
        write_json(self.path, body)

    def start(self) -> "Lease":
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self._beat()
                except OSError:
                    pass

        self._thread = threading.Thread(target=loop, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        body = _read_lease(self.path) or {}
        if body.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class StepDir:
    """A step's folder: its status history and its lease."""

    STATES: tuple[str, ...] = ("pending", "running", "done", "failed")

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def history_path(self) -> Path:
        return self.path / "status.jsonl"

    @property
    def lease_path(self) -> Path:
        return self.path / "lease.json"

    # status history
    def history(self) -> list[dict]:
        """Every complete status line, oldest first."""
        try:
            text = self.history_path.read_bytes()
        except FileNotFoundError:
            return self._legacy_history()
        except IsADirectoryError:
            return []
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn line from a writer killed mid-append, or damage
            if isinstance(entry, dict) and entry.get("state") in self.STATES:
                out.append(entry)
        return out

    def _legacy_history(self) -> list[dict]:
        """A folder an older medscale wrote (read as it is: reading never writes)."""
        from medscale.scaling.sweep.store_format import format1_history  # it imports this module

        return format1_history(self.path, self.STATES)

    def status(self) -> dict:
        merged: dict[str, Any] = {"state": "pending", "attempts": 0}
        for entry in self.history():
            merged.update(entry)
        return merged

    def state(self) -> str:
        return self.status()["state"]

    def set_status(self, state: str, **fields: Any) -> dict:
        """Append one line to the history (O_APPEND: concurrent appends never interleave within a line)."""
        if state not in self.STATES:
            raise ValueError(f"unknown state {state!r}; allowed: {self.STATES}")
        entry = {**fields, "state": state, "at": time.time()}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            with naming(self.history_path):
                if self._torn_tail():
                    os.write(fd, b"\n")  # end a torn line so this entry parses
                os.write(fd, line)
                os.fsync(fd)
        finally:
            os.close(fd)
        return self.status()

    def _torn_tail(self) -> bool:
        try:
            with open(self.history_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    # lease
    def lease_info(self) -> dict | None:
        return _read_lease(self.lease_path)

    def lease_is_live(self, stale_after: float) -> bool:
        return _lease_live(self.lease_info(), stale_after)

    def acquire_lease(self, *, stale_after: float = 60.0, heartbeat_s: float = 5.0) -> Lease:
        """Take the step's lease or raise LeaseHeld. Breaks a lease whose holder stopped beating."""
        token = uuid.uuid4().hex
        body = {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                "acquired_at": time.time(), "heartbeat_at": time.time()}
        # The lease appears with its content or not at all: written to a private file, then hard-linked
        # into place (link fails if the lease exists: an atomic create-exclusive, on NFS too).
        self.path.mkdir(parents=True, exist_ok=True)
        private = self.path / f".lease.{token}.tmp"
        with open(private, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            return self._link_lease(private, token, stale_after, heartbeat_s)
        finally:
            private.unlink(missing_ok=True)

    def _link_lease(self, private: Path, token: str, stale_after: float, heartbeat_s: float) -> Lease:
        for _ in range(3):
            try:
                os.link(private, self.lease_path)
            except FileExistsError:
                info = self.lease_info()
                if info is None:
                    continue  # released between our open and read
                if _lease_live(info, stale_after):
                    raise LeaseHeld(f"{self.name} is held by pid {info.get('pid')} on {info.get('host')}")
                # Stale: move it aside. If what we moved is not the stale lease we judged (another breaker
                # replaced it meanwhile with a fresh one), put that one back and yield to its holder.
                graveyard = self.path / f".lease.stale.{token}"
                try:
                    os.rename(self.lease_path, graveyard)
                except FileNotFoundError:
                    continue
                moved = _read_lease(graveyard) or {}
                if moved.get("token") != info.get("token"):
                    try:
                        os.link(graveyard, self.lease_path)
                    except FileExistsError:
                        pass
                    graveyard.unlink(missing_ok=True)
                    raise LeaseHeld(f"{self.name} was just taken by pid {moved.get('pid')}")
                graveyard.unlink(missing_ok=True)
                continue
            return Lease(self.lease_path, token, heartbeat_s).start()
        raise LeaseHeld(f"could not take the lease of {self.name}: contended")
