"""Tokenization wall time against a plain parquet scan of the same MEDS data, and tokens per patient.

    .venv/bin/python benchmarks/bench_data_tokenizer.py --subjects 50000 --workers 2
    .venv/bin/python benchmarks/bench_data_tokenizer.py --meds /tmp/meds1m --workers 2

The scan reads every shard's four MEDS columns into memory with pyarrow (multi-threaded), which is
the floor for any tokenizer that reads the data; tokenize_dataset includes validation, fitting on
train and writing the token files.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from data.simulator import generate_cohort  # noqa: E402
from data.token_store import tokenize_dataset  # noqa: E402

COLUMNS = ["subject_id", "time", "code", "numeric_value"]


def scan_seconds(meds: Path) -> tuple[float, int]:
    t = time.perf_counter()
    rows = sum(pq.read_table(p, columns=COLUMNS).num_rows for p in sorted((meds / "data").rglob("*.parquet")))
    return time.perf_counter() - t, rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meds", type=Path, default=None, help="an existing MEDS dataset (default: simulate one)")
    ap.add_argument("--subjects", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    try:
        meds = args.meds or generate_cohort(tmp / "meds", args.subjects, 0, workers=args.workers)
        scan_seconds(meds)  # warm the page cache so both timings read from memory
        scan_s, rows = scan_seconds(meds)
        t = time.perf_counter()
        out = tokenize_dataset(meds, tmp / "tokens", workers=args.workers)
        tok_s = time.perf_counter() - t
        manifest = json.loads((out / "manifest.json").read_text())
        train = manifest["splits"]["train"]
        result = {
            "rows": rows, "scan_seconds": round(scan_s, 2), "tokenize_seconds": round(tok_s, 2),
            "ratio_vs_scan": round(tok_s / scan_s, 2), "vocab_size": manifest["vocab_size"],
            "tokens_per_patient_mean": round(train["tokens_per_subject_mean"], 1),
            "tokens_per_patient_median": train["tokens_per_subject_median"],
            "tokens_total": sum(s["tokens"] for s in manifest["splits"].values()),
        }
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
