"""Simulator throughput: patients per minute, against a plain parquet write of the same rows.

    .venv/bin/python benchmarks/bench_data_simulator.py --subjects 200000 --workers 2
    .venv/bin/python benchmarks/bench_data_simulator.py --subjects 1000000 --workers 2 --keep /tmp/meds1m

The reference is the cost of writing the cohort's rows once with the same writer settings (what any
simulator must at least pay), measured in the same run on the same machine; peak memory is the
largest resident set of the parent and of any worker process.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.dataset as pads  # noqa: E402

from medscale.data.parquet_io import write_parquet  # noqa: E402
from medscale.data.simulator import generate_cohort  # noqa: E402


def plain_write_seconds(meds: Path, scratch: Path) -> tuple[float, int]:
    """Read each shard, then time writing exactly those rows to new parquet files."""
    total, rows = 0.0, 0
    for i, path in enumerate(sorted((meds / "data").rglob("*.parquet"))):
        table = pads.dataset(path).to_table()
        rows += table.num_rows
        t = time.perf_counter()
        write_parquet(table, scratch / f"{i}.parquet")
        total += time.perf_counter() - t
    return total, rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the cohort here and keep it")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    out = args.keep or tmp / "meds"
    try:
        t = time.perf_counter()
        generate_cohort(out, args.subjects, args.seed, workers=args.workers)
        seconds = time.perf_counter() - t
        meta = json.loads((out / "metadata" / "dataset.json").read_text())["simulator"]
        write_s, rows = plain_write_seconds(out, tmp / "plain")
        peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        result = {
            "subjects": args.subjects, "workers": args.workers, "seconds": round(seconds, 2),
            "patients_per_minute": round(args.subjects / seconds * 60),
            "events": meta["events"], "events_per_patient": round(meta["events"] / args.subjects, 1),
            "plain_parquet_write_seconds_one_core": round(write_s, 2),
            "ratio_vs_plain_write_per_core": round(seconds * args.workers / write_s, 2),
            "peak_rss_mb": round(peak_mb),
        }
        assert rows == meta["events"]
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
