"""Prepare a sweep's dataset once, as an idempotent step (medscale.scaling.steps): generate (simulator)
or take (MEDS path), then tokenize.

    <root>/datasets/<kind>-<dataset_id>/status.jsonl  state history
                                        meds/         the synthetic cohort (simulator only)
                                        tokens/       token shards, tokenizer, manifest.json

Crash-safe: each stage is written to a temporary folder and renamed into place. The step's lease keeps
two launches (on one machine or several sharing the store) from preparing the same dataset at once:
the second waits for the first.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medscale.scaling.spec import SweepSpec, dataset_id, dataset_kind
from medscale.scaling.steps import LeaseHeld, StepDir

Progress = Callable[[str, int, int], None]
WAIT_S = 2.0


@dataclass(frozen=True)
class PreparedDataset:
    dataset_id: str
    meds_dir: Path
    token_dir: Path
    vocab_size: int
    manifest: dict


def dataset_path(spec: SweepSpec, root: Path | str) -> Path:
    """Where the spec's prepared dataset lives in the store at `root` (reads nothing)."""
    return Path(root) / "datasets" / f"{dataset_kind(spec)}-{dataset_id(spec)}"


def dataset_dir(spec: SweepSpec, root: Path | str) -> Path:
    """`dataset_path`, adopting a folder from a store written before the kind prefix."""
    base = dataset_path(spec, root)
    legacy = base.with_name(dataset_id(spec))
    if not base.exists() and legacy.is_dir():
        os.rename(legacy, base)
    return base


def _build(final: Path, build: Callable[[Path], None]) -> None:
    if final.exists():
        return
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(final)


def prepare_dataset(spec: SweepSpec, root: Path, *, progress: Progress | None = None,
                    workers: int | None = None) -> PreparedDataset:
    base = dataset_dir(spec, root)
    step = StepDir(base)
    report = progress or (lambda stage, done, total: None)
    while step.state() != "done":
        try:
            lease = step.acquire_lease()
        except LeaseHeld:
            time.sleep(WAIT_S)  # another launch is preparing it: wait for its result
            continue
        with lease:
            if step.state() != "done":
                step.set_status("running")
                try:
                    _prepare(spec, base, report, workers)
                except BaseException as err:
                    step.set_status("failed", error=f"{type(err).__name__}: {err}"[:2000])
                    raise
                step.set_status("done")
    return _prepared(spec, base)


def _meds_dir(spec: SweepSpec, base: Path) -> Path:
    return base / "meds" if spec.dataset.simulator is not None else Path(spec.dataset.meds)


def _prepare(spec: SweepSpec, base: Path, report: Progress, workers: int | None) -> None:
    from medscale.data.simulator import generate_cohort
    from medscale.data.token_store import tokenize_dataset

    if spec.dataset.simulator is not None:
        sim = spec.dataset.simulator
        _build(base / "meds", lambda out: generate_cohort(
            out, sim.subjects, sim.seed, workers=workers,
            progress=lambda done, total: report("generate", done, total)))
    tok = spec.dataset.tokenizer
    _build(base / "tokens", lambda out: tokenize_dataset(
        _meds_dir(spec, base), out, tok.to_config(),
        workers=workers, progress=lambda done, total: report("tokenize", done, total)))


def _prepared(spec: SweepSpec, base: Path) -> PreparedDataset:
    token_dir = base / "tokens"
    manifest = json.loads((token_dir / "manifest.json").read_text())
    return PreparedDataset(dataset_id(spec), _meds_dir(spec, base), token_dir, int(manifest["vocab_size"]), manifest)
