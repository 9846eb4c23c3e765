"""The linear probe's fit with BLAS on one thread against BLAS's default thread pool.

    .venv/bin/python benchmarks/bench_downstream_probe.py [--rounds 5]

The probe (scaling/downstream/baselines.py) fits LogisticRegressionCV (8 values of C, 5 folds, L-BFGS) on
frozen representations: the demo's are 1,500 rows of 4 to 64 features, a user's up to thousands of rows of
1,024 or more. Each size is fitted in alternating rounds, one thread then the default pool, so both see the
same background load, after one fit that loads the libraries; printed: the median seconds of each and default / one thread (above 1: one thread is
faster). The probe uses one thread up to baselines.ONE_THREAD_UP_TO feature values.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shapes", default="1500x16,1500x64,1500x256,20000x256,4000x1024", help="rows x features, comma-separated")
    args = p.parse_args()

    from threadpoolctl import threadpool_info, threadpool_limits

    from medscale.scaling.downstream.baselines import ONE_THREAD_UP_TO, _binary_classifier
    from medscale.scaling.run.processor import processor

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    _binary_classifier(np.arange(40) % 2, 0).fit(rng.normal(size=(40, 4)), np.arange(40) % 2)  # imports, BLAS loaded
    pools = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    print(f"processor: {processor().describe()}; {os.cpu_count()} cores; default pools: {pools}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| rows x features | one thread (s) | default pool (s) | default / one thread | the probe uses |")
    print("|---|---:|---:|---:|---|")
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.split("x"))
        rng = np.random.default_rng(0)
        X = rng.normal(size=(n, d))
        y = (X[:, : max(1, d // 8)].sum(axis=1) + rng.normal(size=n) > 1).astype(int)
        times: dict[str, list[float]] = {"one": [], "default": []}
        for _ in range(args.rounds):
            for kind in ("one", "default"):
                t0 = time.perf_counter()
                if kind == "one":
                    with threadpool_limits(limits=1, user_api="blas"):
                        _binary_classifier(y, 0).fit(X, y)
                else:
                    _binary_classifier(y, 0).fit(X, y)
                times[kind].append(time.perf_counter() - t0)
        one, default = float(np.median(times["one"])), float(np.median(times["default"]))
        uses = "one thread" if X.size <= ONE_THREAD_UP_TO else "the default pool"
        print(f"| {n:,} x {d:,} | {one:.3f} | {default:.3f} | {default / one:.2f} | {uses} |", flush=True)


if __name__ == "__main__":
    main()
