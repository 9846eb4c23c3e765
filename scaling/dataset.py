"""Prepare a sweep's dataset once: generate (simulator) or take (MEDS path), then tokenize.

    <root>/datasets/<dataset_id>/meds/     the synthetic cohort (simulator only)
                                 tokens/   token shards, tokenizer, manifest.json

Idempotent and crash-safe: each stage is written to a temporary folder and renamed into place, and
a file lock keeps two launches from preparing the same dataset at once.
"""
from __future__ import annotations

import fcntl
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scaling.spec import SweepSpec, dataset_id

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PreparedDataset:
    dataset_id: str
    meds_dir: Path
    token_dir: Path
    vocab_size: int
    manifest: dict


def _build(final: Path, build: Callable[[Path], None]) -> None:
    if final.exists():
        return
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(final)


def prepare_dataset(spec: SweepSpec, root: Path, *, progress: Progress | None = None,
                    workers: int | None = None) -> PreparedDataset:
    from data.simulator import generate_cohort
    from data.token_store import tokenize_dataset
    from data.tokenizer import TokenizerConfig

    ds_id = dataset_id(spec)
    base = Path(root) / "datasets" / ds_id
    base.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda stage, done, total: None)
    with open(base / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if spec.dataset.simulator is not None:
            sim = spec.dataset.simulator
            meds_dir = base / "meds"
            _build(meds_dir, lambda out: generate_cohort(
                out, sim.subjects, sim.seed, workers=workers,
                progress=lambda done, total: report("generate", done, total)))
        else:
            meds_dir = Path(spec.dataset.meds)
        tok = spec.dataset.tokenizer
        token_dir = base / "tokens"
        _build(token_dir, lambda out: tokenize_dataset(
            meds_dir, out, TokenizerConfig(min_count=tok.min_count, n_value_bins=tok.value_bins),
            workers=workers, progress=lambda done, total: report("tokenize", done, total)))
    manifest = json.loads((token_dir / "manifest.json").read_text())
    return PreparedDataset(ds_id, meds_dir, token_dir, int(manifest["vocab_size"]), manifest)
