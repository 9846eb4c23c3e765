"""The run store: each training run is an idempotent step (medscale.scaling.sweep.step_dir) named
`<objective>-<hash of the fields that define it>`.

    <root>/runs/<run_id>/config.yaml    resolved run config (RunConfig; its identity fields are what the hash covers)
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

One sweep name in a store has one dataset and one schedule (refuse_mixed_sweep, refuse_changed_sweep): its
runs are fitted as one family. A run whose process died mid-run (state running, no live lease) is reported
`stale`, and marked so by a launch that does not resume it; rerunning its own sweep resumes it.

Stores written by an older medscale are read as they are and upgraded in place when a launch claims them
(medscale.scaling.sweep.store_format: the one place that knows older formats).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import yaml

from medscale.atomic import CorruptFile, claim_dir, read_json, write_with, write_yaml
from medscale.scaling.errors import UserError
from medscale.scaling.run.run_config import RunConfig, identity_of
from medscale.scaling.sweep import store_format
from medscale.scaling.sweep.step_dir import LeaseHeld, StepDir, identity_hash

__all__ = ["FINAL_STATES", "LeaseHeld", "RunDir", "RunStore", "STATES", "config_hash", "run_id"]

# "preempted": stopped on SIGTERM after saving a checkpoint; resumable, like "running" with a dead lease.
# "stale": its process died while it ran (no live lease) and the launch that last came by did not resume it
# (another sweep's); resumable too, by rerunning its own sweep. Never reported as running.
STATES = ("pending", "running", "done", "failed", "diverged", "preempted", "stale")
FINAL_STATES = ("done", "diverged")
STALE_AFTER_S = 60.0  # a lease not renewed for this long belongs to a dead holder (the scheduler's default too)


# What a run of a sweep means beyond its grid point: one sweep name, one meaning (the dataset and its tokenizer
# are checked by refuse_mixed_sweep). The spec field each comes from, and its value when a config lacks it.
MEANING = {"schedule": ("optimizer.schedule", "cosine"), "cooldown_fraction": ("optimizer.cooldown_fraction", None),
           "cooldown_shape": ("optimizer.cooldown_shape", "linear")}


def run_meaning(config: dict) -> dict:
    """The MEANING fields of a run config's `train` (the cooldown ones only under WSD)."""
    train = config.get("train") or {}
    meaning = {k: train.get(k, default) for k, (_, default) in MEANING.items()}
    return meaning if meaning["schedule"] == "wsd" else {"schedule": meaning["schedule"]}


def config_hash(config: RunConfig | dict) -> str:
    """The hash of a run config's identity fields (those marked identity in RunConfig)."""
    return identity_hash(identity_of(config.to_dict() if isinstance(config, RunConfig) else config))


def run_id(config: RunConfig | dict) -> str:
    """A run's folder name: its objective, then the hash of its defining fields."""
    objective = config.objective if isinstance(config, RunConfig) else config.get("objective", "run")
    return f"{objective}-{config_hash(config)}"


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
        """The run's config; CorruptFile when it is torn or not a run config."""
        try:
            body = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as err:
            raise CorruptFile(self.config_path, f"not valid YAML ({getattr(err, 'problem', err)})") from None
        except (IsADirectoryError, UnicodeDecodeError):
            raise CorruptFile(self.config_path, "not a text file") from None
        if not isinstance(body, dict) or not {"model", "train", "data"} <= set(body):
            raise CorruptFile(self.config_path, "not a run config (torn or overwritten)")
        return body

    def run_config(self) -> RunConfig:
        """The run's config, typed (any format medscale wrote); CorruptFile when it cannot be one."""
        try:
            return RunConfig.coerce(self.config())
        except (ValueError, TypeError) as err:
            raise CorruptFile(self.config_path, str(err)) from None

    def metrics(self) -> dict | None:
        """Final metrics, None before the run is done; CorruptFile when the file is damaged."""
        body = read_json(self.metrics_path)
        if body is not None and not isinstance(body, dict):
            raise CorruptFile(self.metrics_path, "not a metrics object")
        return body

    def curve(self) -> list[dict]:
        """The recorded held-out curve, [] when there is none or it cannot be read (it is then rebuilt
        from the next evaluations on)."""
        try:
            return pd.read_csv(self.curve_path).to_dict("records") if self.curve_path.exists() else []
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return []

    def repair(self, config: dict, say: Callable[[str], None]) -> None:
        """Make a crash's leftovers readable: a damaged config is rewritten from the spec's (it is derived);
        damaged metrics of a finished run are set aside and the run resumed from its last checkpoint,
        which recomputes them."""
        try:
            self.config()
        except (CorruptFile, FileNotFoundError) as err:
            if self.config_path.exists() or self.config_path.is_symlink():
                say(f"run {self.run_id}: {err}; rewritten from the spec")
            if self.config_path.is_dir():
                os.replace(self.config_path, self.path / "config.yaml.corrupt")
            write_yaml(self.config_path, config)
        try:
            self.metrics()
        except CorruptFile as err:
            os.replace(self.metrics_path, self.metrics_path.with_name("metrics.json.corrupt"))
            if self.state() in ("done", "diverged"):
                say(f"run {self.run_id}: {err}; resuming the run from its last checkpoint to recompute it")
                self.set_status("pending", error=f"{err}; recomputed from the last checkpoint")


class RunStore:
    """All runs of a sweep (or of any set of launches) under one root."""

    def __init__(self, root: Path | str, say: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.say = say or (lambda message: print(message, file=sys.stderr))
        self._meaning_cache: dict | None = None  # refuse_changed_sweep's view of the runs here
        self._upgraded = False

    def claim(self) -> "RunStore":
        """Make the root a run store (or refuse: OutDirError) before writing anything into it."""
        claim_dir(self.root, "store", adopt=lambda p: (p / "runs").is_dir() or (p / "datasets").is_dir())
        self._upgrade()
        return self

    def _upgrade(self) -> None:
        """Writers read and write the current format only (store_format); readers never write."""
        if not self._upgraded:
            store_format.upgrade_store(self.root, self.say)
            self._upgraded = True

    def refuse_mixed_sweep(self, name: str, dataset_id: str, dataset: dict) -> None:
        """One sweep name, one dataset: refuse a spec whose dataset (its content or its tokenizer) differs
        from that of the runs of the same sweep name already here, naming both."""
        for run in self.runs():
            try:
                cfg = run.config()
            except (CorruptFile, OSError):
                continue
            theirs = cfg.get("data", {}).get("dataset_id")
            if cfg.get("sweep") != name or not theirs or theirs == dataset_id:
                continue
            before = self.root / "sweeps" / f"{name}.yaml"
            try:
                old = (yaml.safe_load(before.read_text()) or {}).get("dataset") if before.exists() else None
            except yaml.YAMLError:
                old = None
            raise UserError(
                f"{self.root} already holds runs of sweep {name!r} over dataset {theirs} "
                f"({_describe(old) if old else cfg['data'].get('token_dir')}); this spec's dataset is {dataset_id} "
                f"({_describe(dataset)}). The data at that path or the tokenizer settings changed. Pooling both "
                "would fit one law to two datasets: use another --out, or rename the sweep (name:).")

    def refuse_changed_sweep(self, name: str, configs: list[dict]) -> None:
        """Refuse (UserError) run configs of sweep `name` whose schedule or cooldown differs from that of the runs
        of the same name already here: pooled, one law would be fitted to two schedules. Says which field
        changed, from what to what, and what to do."""
        known = self._meanings().get(name)
        for config in configs if known else []:
            new = run_meaning(config)
            for key, (field, _) in MEANING.items():
                if key in new and key in known[0] and new[key] != known[0][key]:
                    raise UserError(self._changed_message(name, field, known, known[0][key], new[key]))

    def _meanings(self) -> dict[str, tuple[dict, list[RunDir]]]:
        """Sweep name -> (the meaning of its runs here, those runs); read once per RunStore."""
        if self._meaning_cache is None:
            self._meaning_cache = {}
            for run in self.runs():
                try:
                    cfg = run.config()
                except (CorruptFile, OSError):
                    continue
                self._meaning_cache.setdefault(cfg.get("sweep"), (run_meaning(cfg), []))[1].append(run)
        return self._meaning_cache

    def _changed_message(self, name: str, field: str, known: tuple[dict, list[RunDir]], old, new) -> str:
        unfinished = sum(run.state() not in FINAL_STATES for run in known[1])
        left = f" ({unfinished} of them unfinished: they resume only under {old!r})" if unfinished else ""
        return (f"{self.root} already holds {len(known[1])} run(s) of sweep {name!r} trained with {field} {old!r}"
                f"{left}; this spec has {field} {new!r}. That changes what every run computes, and a sweep's runs "
                f"are fitted as one family, so they would be pooled. To keep both, use another --out or rename the "
                f"sweep (name:); to go on with this sweep, set {field} back to {old!r}.")

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def ensure(self, config: RunConfig | dict) -> RunDir:
        """Create the run's folder with its config (idempotent); returns it. Refuses (UserError) a config whose
        schedule differs from that of its sweep's runs here (refuse_changed_sweep)."""
        if isinstance(config, RunConfig):
            config = config.to_dict()
        self._upgrade()
        self.refuse_changed_sweep(config.get("sweep"), [config])
        run = self.run_dir(run_id(config))
        run.path.mkdir(parents=True, exist_ok=True)
        run.repair(config, self.say)
        self._update_fork_steps(run, config)
        if not run.history():
            run.set_status("pending", attempts=0)
        return run

    @staticmethod
    def _update_fork_steps(run: RunDir, config: dict) -> None:
        """A WSD trunk's fork steps are outside its identity: a grid that gained budgets adds them to the
        config of the trunk already there (those it has already passed are trained from scratch)."""
        want = (config.get("checkpoint") or {}).get("fork_steps")
        try:
            have = run.config()
        except (CorruptFile, OSError):
            return
        known = (have.get("checkpoint") or {}).get("fork_steps") or []
        if want and not set(want) <= set(known):  # never drops one: another sweep's branch may need it
            have["checkpoint"] = {**(have.get("checkpoint") or {}), "fork_steps": sorted(set(want) | set(known))}
            write_yaml(run.config_path, have)

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
            if status["state"] == "running" and not run.lease_is_live(STALE_AFTER_S):
                row["status"] = "stale"  # its process died: nothing is training it (a rerun of its sweep resumes it)
            try:
                row.update(flatten_run_config(run.config()))
            except (CorruptFile, KeyError, TypeError) as err:
                self.say(f"skipping run {run.run_id}: {err} (a rerun of its sweep rewrites it)")
                continue
            try:
                row.update(run.metrics() or {})
            except CorruptFile as err:
                self.say(f"run {run.run_id}: {err}; left out of the fits (a rerun of its sweep recomputes it)")
                row["status"] = "damaged"
            if status["state"] == "diverged":
                row["diverged_step"] = status.get("diverged_step")
            rows.append(row)
        return pd.DataFrame(rows)

    def curves_frame(self) -> pd.DataFrame:
        frames = []
        for run in self.runs():
            records = run.curve()
            if records:
                df = pd.DataFrame(records)
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


def _describe(dataset: dict) -> str:
    source = dataset.get("meds") or f"simulator {dataset.get('simulator')}"
    return f"{source}, tokenizer {dataset.get('tokenizer')}"


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
        "train_fraction": config["data"].get("train_fraction", 1.0),
        # a WSD sweep's runs (scaling/sweep/wsd.py): a branch names its trunk and the step it forked at
        **({"schedule": "wsd", "parent": train.get("parent"), "fork_step": train.get("fork_step")}
           if train.get("schedule") == "wsd" else {}),
    }
