"""Tokenization wall time against a plain parquet scan of the same MEDS data, and tokens per patient.

    .venv/bin/python benchmarks/bench_data_tokenizer.py --subjects 50000 --workers 2
    .venv/bin/python benchmarks/bench_data_tokenizer.py --meds /tmp/meds1m --workers 2 --repeat 5

What is compared, on the same files, columns and rows (every shard under data/, all four MEDS columns):
- scan: `pq.read_table(shard, columns=the four)` for every shard, into memory (pyarrow multi-threaded,
  codes as plain strings): the plain read that is the floor for any tokenizer that reads the data.
- tokenize: `tokenize_dataset` end to end: validation, fitting on train, encoding every split and
  writing (fsync'd) the token files. It reads each shard once, codes dictionary-encoded.
- dict_scan (for reference): the scan with codes dictionary-encoded, i.e. the read tokenization does;
  cheaper than the plain scan, so ratio_vs_dict_scan is the stricter figure.
The page cache is warmed first, so every timing reads from memory. The timed runs alternate
scan / dict_scan / tokenize `--repeat` times; the medians are reported (wall seconds, and CPU
seconds of this process, all threads), with the 1-minute load average before and after, since the
machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from medscale.data.simulator import generate_cohort  # noqa: E402
from medscale.data.token_store import tokenize_dataset  # noqa: E402

COLUMNS = ["subject_id", "time", "code", "numeric_value"]


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def scan_seconds(meds: Path, dictionary: bool = False) -> tuple[float, int]:
    files = sorted((meds / "data").rglob("*.parquet"))
    extra = {"read_dictionary": ["code"]} if dictionary else {}
    t = time.perf_counter()
    rows = sum(pq.read_table(p, columns=COLUMNS, **extra).num_rows for p in files)
    return time.perf_counter() - t, rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meds", type=Path, default=None, help="an existing MEDS dataset (default: simulate one)")
    ap.add_argument("--subjects", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each; medians are reported")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    try:
        meds = args.meds or generate_cohort(tmp / "meds", args.subjects, 0, workers=args.workers)
        scan_seconds(meds)  # warm the page cache so every timing reads from memory
        load_before = os.getloadavg()[0]
        runs: dict[str, list[tuple[float, float]]] = {"scan": [], "dict_scan": [], "tokenize": []}
        rows, manifest = 0, None
        for i in range(max(1, args.repeat)):
            wall, cpu, (_, rows) = _timed(lambda: scan_seconds(meds))
            runs["scan"].append((wall, cpu))
            wall, cpu, _ = _timed(lambda: scan_seconds(meds, dictionary=True))
            runs["dict_scan"].append((wall, cpu))
            out_dir = tmp / f"tokens{i}"
            wall, cpu, out = _timed(lambda: tokenize_dataset(meds, out_dir, workers=args.workers))
            runs["tokenize"].append((wall, cpu))
            manifest = json.loads((out / "manifest.json").read_text())
            shutil.rmtree(out_dir, ignore_errors=True)
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
        train = manifest["splits"]["train"]
        result = {
            "rows": rows, "workers": args.workers, "repeat": max(1, args.repeat),
            "scan_seconds": round(med["scan"][0], 3), "tokenize_seconds": round(med["tokenize"][0], 3),
            "ratio_vs_scan": round(med["tokenize"][0] / med["scan"][0], 2),
            "dict_scan_seconds": round(med["dict_scan"][0], 3),
            "ratio_vs_dict_scan": round(med["tokenize"][0] / med["dict_scan"][0], 2),
            "scan_cpu_seconds": round(med["scan"][1], 3), "tokenize_cpu_seconds": round(med["tokenize"][1], 3),
            "scan_seconds_runs": [round(w, 3) for w, _ in runs["scan"]],
            "tokenize_seconds_runs": [round(w, 3) for w, _ in runs["tokenize"]],
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "vocab_size": manifest["vocab_size"],
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
