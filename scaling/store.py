"""The run store: a run's folder is a hash of its resolved config, its state a status file.

    <root>/runs/<run_id>/config.yaml    resolved run config (what the hash covers)
                        status.json    state, attempts, last error, diverged step
                        lease.json     who is running it now, with a heartbeat
                        metrics.json   final metrics (written once, when done)
                        curve.csv      held-out loss at intervals
                        ckpt/          orbax checkpoints
    <root>/results.parquet, results.csv  one row per run, rewritten atomically

Sweeps are idempotent by path: relaunching computes the same run ids, skips `done`, resumes
the rest from their checkpoints. Two launches never run one run at once: a run is only trained
under a lease (created atomically and exclusively), and a lease whose heartbeat is older than `stale_after`
seconds belongs to a dead holder and may be broken.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from scaling.atomic import read_json, write_json, write_with, write_yaml

STATES = ("pending", "running", "done", "failed", "diverged")
FINAL_STATES = ("done", "diverged")
# Keys that say where things are, not what is computed: excluded from the run hash.
LOCATION_KEYS = ("token_dir",)


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict, length: int = 12) -> str:
    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in LOCATION_KEYS}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return hashlib.sha256(canonical(strip(config)).encode()).hexdigest()[:length]


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


class LeaseHeld(RuntimeError):
    """Another live process holds this run's lease."""


@dataclass
class Lease:
    path: Path
    token: str
    heartbeat_s: float
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def _beat(self) -> None:
        body = read_json(self.path) or {}
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
        body = read_json(self.path) or {}
        if body.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunDir:
    """One run's folder and the operations on its state."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # files
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def lease_path(self) -> Path:
        return self.path / "lease.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def curve_path(self) -> Path:
        return self.path / "curve.csv"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    def config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    def status(self) -> dict:
        return read_json(self.status_path) or {"state": "pending", "attempts": 0}

    def state(self) -> str:
        return self.status()["state"]

    def metrics(self) -> dict | None:
        return read_json(self.metrics_path)

    def set_status(self, state: str, **fields: Any) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; allowed: {STATES}")
        body = self.status()
        body.update(fields)
        body["state"] = state
        body["updated_at"] = time.time()
        write_json(self.status_path, body)
        return body

    # lease
    def lease_info(self) -> dict | None:
        return read_json(self.lease_path)

    def lease_is_live(self, stale_after: float) -> bool:
        return _lease_live(self.lease_info(), stale_after)

    def acquire_lease(self, *, stale_after: float = 60.0, heartbeat_s: float = 5.0) -> Lease:
        """Take the run's lease or raise LeaseHeld. Breaks a lease whose holder stopped beating."""
        token = uuid.uuid4().hex
        body = {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                "acquired_at": time.time(), "heartbeat_at": time.time()}
        # The lease appears with its content or not at all: written to a private file, then hard-linked
        # into place (link fails if the lease exists: an atomic create-exclusive, on NFS too).
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
                    raise LeaseHeld(f"run {self.run_id} is held by pid {info.get('pid')} on {info.get('host')}")
                # Stale: move it aside. If what we moved is not the stale lease we judged (another breaker
                # replaced it meanwhile with a fresh one), put that one back and yield to its holder.
                graveyard = self.path / f".lease.stale.{token}"
                try:
                    os.rename(self.lease_path, graveyard)
                except FileNotFoundError:
                    continue
                moved = read_json(graveyard) or {}
                if moved.get("token") != info.get("token"):
                    try:
                        os.link(graveyard, self.lease_path)
                    except FileExistsError:
                        pass
                    graveyard.unlink(missing_ok=True)
                    raise LeaseHeld(f"run {self.run_id} was just taken by pid {moved.get('pid')}")
                graveyard.unlink(missing_ok=True)
                continue
            return Lease(self.lease_path, token, heartbeat_s).start()
        raise LeaseHeld(f"could not take the lease of run {self.run_id}: contended")


class RunStore:
    """All runs of a sweep (or of any set of launches) under one root."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def ensure(self, config: dict) -> RunDir:
        """Create the run's folder with its config (idempotent); returns it."""
        run = self.run_dir(config_hash(config))
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config_path.exists():
            write_yaml(run.config_path, config)
        if not run.status_path.exists():
            run.set_status("pending", attempts=0)
        return run

    def runs(self) -> Iterator[RunDir]:
        if not self.runs_dir.exists():
            return iter(())
        return (RunDir(p) for p in sorted(self.runs_dir.iterdir()) if (p / "config.yaml").exists())

    def results_frame(self) -> pd.DataFrame:
        rows = []
        for run in self.runs():
            status = run.status()
            row: dict[str, Any] = {"run_id": run.run_id, "status": status["state"],
                                   "attempts": status.get("attempts", 0)}
            row.update(flatten_run_config(run.config()))
            row.update(run.metrics() or {})
            if status["state"] == "diverged":
                row["diverged_step"] = status.get("diverged_step")
            rows.append(row)
        return pd.DataFrame(rows)

    def curves_frame(self) -> pd.DataFrame:
        frames = []
        for run in self.runs():
            if run.curve_path.exists():
                df = pd.read_csv(run.curve_path)
                df.insert(0, "run_id", run.run_id)
                frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_results(self) -> pd.DataFrame:
        df = self.results_frame()
        write_with(self.root / "results.parquet", lambda p: df.to_parquet(p, index=False))
        write_with(self.root / "results.csv", lambda p: df.to_csv(p, index=False))
        curves = self.curves_frame()
        if len(curves):
            write_with(self.root / "curves.csv", lambda p: curves.to_csv(p, index=False))
        return df


def flatten_run_config(config: dict) -> dict:
    """The columns of a run's config that the results table and analysis need."""
    model, train = config["model"], config["train"]
    return {
        "objective": config["objective"],
        "sweep": config.get("sweep"),
        "budget": config.get("budget"),
        "d_model": model["d_model"], "n_layers": model["n_layers"], "n_heads": model["n_heads"],
        "d_ff": model["d_ff"], "vocab_size": model["vocab_size"],
        "seq_len": config["data"]["seq_len"], "batch_size": config["data"]["batch_size"],
        "lr": train["lr"], "seed": train["seed"], "target_tokens": train["tokens"],
    }
