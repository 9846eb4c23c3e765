"""Prepare a sweep's dataset once, as an idempotent step (medscale.scaling.sweep.step_dir): generate (simulator)
or take (MEDS path), then tokenize.

    <root>/datasets/<kind>-<dataset_id>/status.jsonl  state history
                                        meds/         the synthetic cohort (simulator only)
                                        tokens/       token shards, tokenizer, manifest.json

Crash-safe: each stage is written to a temporary folder and renamed into place. The step's lease keeps
two launches (on one machine or several sharing the store) from preparing the same dataset at once:
the second waits for the first.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medscale.atomic import CorruptFile, read_json
from medscale.data.simulator import generate_cohort
from medscale.scaling.sweep.spec import SpecError, SweepSpec, dataset_id, dataset_kind
from medscale.scaling.sweep.step_dir import LeaseHeld, StepDir

Progress = Callable[[str, int, int], None]
WAIT_S = 2.0
MANY_PASSES = 100  # a run that reads its train split more often than this is warned about


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
    """`dataset_path` (a store from before the kind prefix is upgraded when it is claimed: store_format)."""
    return dataset_path(spec, root)


def _build(final: Path, build: Callable[[Path], None]) -> None:
    if final.exists():
        return
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(final)


def _damage(base: Path) -> str | None:
    """Why a prepared dataset marked done cannot be used (its manifest is missing or corrupt), or None."""
    try:
        manifest = read_json(base / "tokens" / "manifest.json")
    except CorruptFile as err:
        return str(err)
    if not isinstance(manifest, dict) or "vocab_size" not in manifest:
        return f"{base / 'tokens' / 'manifest.json'}: missing or incomplete"
    return None


def prepare_dataset(spec: SweepSpec, root: Path, *, progress: Progress | None = None,
                    workers: int | None = None, say: Callable[[str], None] | None = None) -> PreparedDataset:
    base = dataset_dir(spec, root)
    step = StepDir(base)
    report = progress or (lambda stage, done, total: None)
    while step.state() != "done" or _damage(base):
        try:
            lease = step.acquire_lease()
        except LeaseHeld:
            time.sleep(WAIT_S)  # another launch is preparing it: wait for its result
            continue
        with lease:
            if step.state() == "done" and (why := _damage(base)):
                (say or print)(f"prepared dataset {base.name} is damaged ({why}); tokenizing it again")
                shutil.rmtree(base / "tokens", ignore_errors=True)
                step.set_status("failed", error=f"damaged: {why}"[:2000])
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
    manifest = read_json(token_dir / "manifest.json")
    return PreparedDataset(base.name.split("-", 1)[-1], _meds_dir(spec, base), token_dir,
                           int(manifest["vocab_size"]), manifest)


def check_usable(spec: SweepSpec, prepared: PreparedDataset, source: str, runs: list[dict] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
    """Refuse before launch what would make every run fail or mean nothing (SpecError, exit 2): a missing
    evaluation split, a train split too small for one batch of windows. Say what silently changes results
    (duplicate rows, almost no timed events, runs that read the data many times over)."""
    splits = prepared.manifest.get("splits", {})
    where = f"dataset {prepared.meds_dir}"
    L, B = spec.model.seq_len, spec.optimizer.batch_size
    for split, key in (("train", "the train split"), (spec.eval.split, f"eval.split {spec.eval.split!r}")):
        tokens = int(splits.get(split, {}).get("tokens", 0))
        if not tokens:
            raise SpecError(f"{source}: {key}: {where} has no {split!r} subjects (splits present: "
                            f"{', '.join(sorted(splits)) or 'none'}). Every run would fail at evaluation; "
                            f"choose eval.split from those present, or assign subjects to {split!r}.")
        windows = (tokens - 1) // L
        need = B if split == "train" else 1
        if windows < need:
            raise SpecError(f"{source}: {where}: the {split!r} split holds {tokens:,} tokens, {windows:,} windows of "
                            f"model.seq_len {L}, fewer than {'one batch of ' + str(B) if split == 'train' else 'one'}. "
                            "Use more data, or lower model.seq_len / optimizer.batch_size.")
    for warning in prepared.manifest.get("warnings", []):
        (say or print)(f"warning: {where}: {warning}")
    train_tokens = int(splits["train"]["tokens"])
    most = max((r["train"]["tokens"] for r in runs or []), default=0)
    if most > MANY_PASSES * train_tokens:
        (say or print)(f"warning: {where}: the largest run trains on {most:,} tokens, {most / train_tokens:,.0f} passes "
                       f"over the {train_tokens:,} train tokens; its loss measures memorisation, not scaling.")
