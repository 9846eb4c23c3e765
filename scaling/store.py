"""The run store: each training run is an idempotent step (medscale.scaling.steps) named
`<objective>-<hash of the fields that define it>`.

    <root>/runs/<run_id>/config.yaml    resolved run config (RUN_IDENTITY of it is what the hash covers)
                        status.jsonl   state history: attempts, last error, diverged step
                        lease.json     who is running it now, with a heartbeat
                        metrics.json   final metrics (written once, when done)
                        curve.csv      held-out loss at intervals
                        ckpt/          orbax checkpoints
    <root>/results.parquet, results.csv  one row per run, rewritten atomically after runs finish

Sweeps are idempotent by path: relaunching computes the same run ids, skips `done`, resumes
the rest from their checkpoints. Two launches never run one run at once: a run is only trained
under a lease (created atomically and exclusively), and a lease whose heartbeat is older than `stale_after`
seconds belongs to a dead holder and may be broken.

Stores from before the kind prefix (`runs/<hash>/`, `status.json`) are still read; a sweep that
reaches such a run renames its folder to the prefixed name and carries on from its checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from medscale.atomic import read_json, write_with, write_yaml
from medscale.scaling.steps import LeaseHeld, StepDir, identity_hash, pick

__all__ = ["FINAL_STATES", "LeaseHeld", "RunDir", "RunStore", "STATES", "config_hash", "run_id"]

STATES = ("pending", "running", "done", "failed", "diverged")
FINAL_STATES = ("done", "diverged")
# The fields of a resolved run config that define what the run computes. Not among them: where the
# tokens are (data.token_dir); the dataset is identified by data.dataset_id instead.
RUN_IDENTITY = ("sweep", "objective", "budget", "model", "param_count", "data", "train", "eval", "checkpoint",
                "options")  # options: how the model is computed (models/options.py), only when not the default
DATA_IDENTITY = ("dataset_id", "seq_len", "batch_size", "mask_prob")


def run_identity(config: dict) -> dict:
    fields = pick(config, RUN_IDENTITY)
    if "data" in fields:
        fields["data"] = pick(fields["data"], DATA_IDENTITY)
    return fields


def config_hash(config: dict) -> str:
    """The hash of a run config's defining fields (RUN_IDENTITY)."""
    return identity_hash(run_identity(config))


def run_id(config: dict) -> str:
    """A run's folder name: its objective, then the hash of its defining fields."""
    return f"{config.get('objective', 'run')}-{config_hash(config)}"


class RunDir(StepDir):
    """One run's folder and the operations on its state."""

    STATES = STATES

    @property
    def run_id(self) -> str:
        return self.path.name

    # files
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

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

    def metrics(self) -> dict | None:
        return read_json(self.metrics_path)


class RunStore:
    """All runs of a sweep (or of any set of launches) under one root."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def ensure(self, config: dict) -> RunDir:
        """Create the run's folder with its config (idempotent); returns it."""
        run = self.run_dir(run_id(config))
        legacy = self.run_dir(config_hash(config))
        if not run.path.exists() and legacy.path.is_dir() and not legacy.lease_is_live(60.0):
            os.rename(legacy.path, run.path)  # a store from before the kind prefix: adopt its run
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config_path.exists():
            write_yaml(run.config_path, config)
        if not run.history():
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
