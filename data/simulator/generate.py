"""Synthetic MEDS v0.4 cohort with exported ground truth: `generate_cohort`.

Layout written under `out_dir`:

    data/<split>/<shard>.parquet          subject_id, time, code, numeric_value (one subject, one shard)
    ground_truth/<split>/<shard>.parquet  subject_id, prediction_time, outcome, value, target_code
    ground_truth/outcomes.json            what each outcome means (see data/ground_truth.py)
    metadata/codes.parquet                code, description, parent_codes
    metadata/subject_splits.parquet       subject_id, split
    metadata/dataset.json
    .medscale-store.json                  {"kind": "cohort", "complete": false}, true once everything is written

Shard s is simulated from SeedSequence([seed, s]) alone, so the files do not depend on the number
of workers, and the same (n_subjects, seed, n_shards) gives byte-identical files.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from medscale.data.simulator.ground_truth import OUTCOME_NAMES, outcomes_table
from medscale.data.meds import MEDS_VERSION, MedsError
from medscale.atomic import OutDirError, marker, remove_stale_temporaries, write_json, write_marker
from medscale.data.parquet_io import write_parquet
from medscale.data.simulator.codebook import codebook
from medscale.data.simulator.cohort import simulate_shard

SUBJECTS_PER_SHARD = 10_000
SPLITS = ("train", "tuning", "held_out")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
US_PER_MINUTE = 60_000_000

Progress = Callable[[int, int], None]


def shard_sizes(n_subjects: int, n_shards: int) -> list[int]:
    base, extra = divmod(n_subjects, n_shards)
    return [base + (i < extra) for i in range(n_shards)]


def _timestamps(minutes: np.ndarray) -> pa.Array:
    null = np.isnan(minutes)
    us = np.where(null, 0, minutes).astype(np.int64) * US_PER_MINUTE
    return pa.array(us, type=pa.timestamp("us"), mask=null)


def _codes(ids: np.ndarray, vocabulary: pa.Array) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(ids, type=pa.int32()), vocabulary).cast(pa.string())


def simulate_and_write(out_dir: str, shard: int, n: int, first_id: int, seed: int, n_shards: int) -> dict:
    """Worker: simulate one shard and write its data and ground-truth files. Returns small stats."""
    cb = codebook()
    sim_seq, split_seq = np.random.SeedSequence([seed, shard]).spawn(2)
    events, truth, state = simulate_shard(n, sim_seq, cb)
    split_of_row = np.random.default_rng(split_seq).choice(len(SPLITS), size=n, p=SPLIT_FRACTIONS)
    subject_ids = first_id + np.arange(n, dtype=np.int64)
    vocabulary = pa.array(cb.codes, type=pa.string())
    outcome_vocab = pa.array(OUTCOME_NAMES, type=pa.string())
    width = max(4, len(str(n_shards - 1)))
    name = f"{shard:0{width}d}.parquet"
    n_events = 0
    for split_idx, split in enumerate(SPLITS):
        keep = split_of_row[events["row"]] == split_idx
        rows = events["row"][keep]
        if rows.size == 0:
            continue
        value = events["value"][keep]
        table = pa.table({
            "subject_id": pa.array(subject_ids[rows], type=pa.int64()),
            "time": _timestamps(events["time"][keep]),
            "code": _codes(events["code"][keep], vocabulary),
            "numeric_value": pa.array(value, type=pa.float32(), mask=np.isnan(value)),
        })
        write_parquet(table, Path(out_dir) / "data" / split / name)
        n_events += rows.size
        tkeep = split_of_row[truth["row"]] == split_idx
        target = truth["target"][tkeep]
        gt = pa.table({
            "subject_id": pa.array(subject_ids[truth["row"][tkeep]], type=pa.int64()),
            "prediction_time": _timestamps(truth["time"][tkeep]),
            "outcome": pa.DictionaryArray.from_arrays(pa.array(truth["outcome"][tkeep].astype(np.int32)),
                                                      outcome_vocab).cast(pa.string()),
            "value": pa.array(truth["value"][tkeep], type=pa.float64()),
            "target_code": pa.DictionaryArray.from_arrays(
                pa.array(np.maximum(target, 0), type=pa.int32(), mask=target < 0), vocabulary).cast(pa.string()),
        })
        write_parquet(gt, Path(out_dir) / "ground_truth" / split / name)
    return {"shard": shard, "subjects": n, "events": int(n_events), "ground_truth_rows": int(truth["row"].size),
            "subject_ids": subject_ids, "splits": split_of_row.astype(np.int8),
            "deaths": int(np.isfinite(state.death).sum())}


def _write_metadata(out: Path, n_subjects: int, seed: int, n_shards: int, results: list[dict]) -> None:
    cb = codebook()
    write_parquet(pa.table({
        "code": pa.array(cb.codes, type=pa.string()),
        "description": pa.array(cb.descriptions, type=pa.string()),
        "parent_codes": pa.array(cb.parents, type=pa.list_(pa.string())),
    }), out / "metadata" / "codes.parquet")
    results = sorted(results, key=lambda r: r["shard"])
    split_names = pa.array(SPLITS, type=pa.string())
    write_parquet(pa.table({
        "subject_id": pa.array(np.concatenate([r["subject_ids"] for r in results]), type=pa.int64()),
        "split": pa.DictionaryArray.from_arrays(
            pa.array(np.concatenate([r["splits"] for r in results]).astype(np.int32)), split_names).cast(pa.string()),
    }), out / "metadata" / "subject_splits.parquet")
    write_json(out / "metadata" / "dataset.json", {
        "dataset_name": "medscale-synthetic",
        "dataset_version": f"n{n_subjects}-seed{seed}-shards{n_shards}",
        "etl_name": "medscale.data.simulator",
        "etl_version": "1",
        "meds_version": MEDS_VERSION,
        "simulator": {"n_subjects": n_subjects, "seed": seed, "n_shards": n_shards,
                      "events": sum(r["events"] for r in results),
                      "ground_truth_rows": sum(r["ground_truth_rows"] for r in results),
                      "deaths": sum(r["deaths"] for r in results)},
    })
    write_json(out / "ground_truth" / "outcomes.json", outcomes_table())


def generate_cohort(out_dir, n_subjects: int, seed: int, *, n_shards: int | None = None,
                    workers: int | None = None, progress: Progress | None = None) -> Path:
    """Simulate `n_subjects` patients into a MEDS dataset at `out_dir` (created; must be empty)."""
    out = Path(out_dir)
    if n_subjects < 1:
        raise MedsError(f"cannot generate {n_subjects} subjects: ask for at least 1 (--subjects N).")
    if not 0 <= seed < 2**63:
        raise MedsError(f"seed {seed} is out of range: use an integer between 0 and 2**63-1.")
    _claim_out(out)
    n_shards = n_shards or max(1, math.ceil(n_subjects / SUBJECTS_PER_SHARD))
    n_shards = min(n_shards, n_subjects)
    sizes = shard_sizes(n_subjects, n_shards)
    firsts = np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]]).tolist()
    workers = max(1, min(workers or os.cpu_count() or 1, n_shards))
    jobs = [(str(out), s, sizes[s], int(firsts[s]), seed, n_shards) for s in range(n_shards)]
    results, done = [], 0
    if progress:
        progress(0, n_subjects)
    if workers == 1:
        for job in jobs:
            results.append(simulate_and_write(*job))
            done += results[-1]["subjects"]
            if progress:
                progress(done, n_subjects)
    else:
        # spawn, not fork: the caller may hold JAX/grain threads that must not be forked
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(simulate_and_write, *job) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                done += results[-1]["subjects"]
                if progress:
                    progress(done, n_subjects)
    _write_metadata(out, n_subjects, seed, n_shards, results)
    write_marker(out, "cohort", complete=True)  # last: readers refuse a cohort without it
    return out


def _claim_out(out: Path) -> None:
    """`out` must be absent, empty, or a cohort an earlier `generate` left incomplete (killed): that one is
    cleared and made again. Anything else is refused, so no file of the user's is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} is a file, not a folder: give a new or empty folder for the cohort.")
    body = marker(out) if out.is_dir() else None
    if body is not None and body.get("kind") == "cohort" and not body.get("complete"):
        import shutil

        for name in ("data", "ground_truth", "metadata"):
            shutil.rmtree(out / name, ignore_errors=True)
        remove_stale_temporaries(out)
    elif out.is_dir() and any(out.iterdir()):
        what = "a complete synthetic cohort" if body is not None and body.get("kind") == "cohort" else "files"
        raise OutDirError(f"output folder {out} is not empty (it holds {what}): choose a new folder or delete it "
                          "first; medscale never writes over existing files.")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "cohort", complete=False)
