"""Which XLA CPU options make medscale's training step fastest on this processor.

    .venv/bin/python benchmarks/bench_cpu_flags.py                       # 1M and 5M, the candidates below
    .venv/bin/python benchmarks/bench_cpu_flags.py --sizes 5e6 --variant=--xla_cpu_use_onednn=true

Each variant is a set of XLA_FLAGS for the JAX worker of bench_train_throughput.py (same model,
batch and step); all variants' workers run in alternating rounds so they see the same background
load, and each is reported as its median step time and its speed against XLA's defaults (what
medscale runs use). A flag earns a place in scaling/run/runtime.py only from a quiet machine's figures on
each processor kind it would apply to.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CANDIDATES = [
    "",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_use_xnnpack=false",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e6,5e6")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--variant", action="append", help="XLA_FLAGS of a variant (repeatable); default: candidates")
    args = p.parse_args()

    from medscale.scaling.run.processor import processor

    cpu = processor()
    variants = args.variant or CANDIDATES
    if "" not in variants:
        variants = [""] + variants
    print(f"processor: {cpu.describe()}; load average {os.getloadavg()[0]:.2f} (1 min) at start", flush=True)
    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for size in args.sizes.split(","):
        procs = {}
        for flags in variants:
            procs[flags] = proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "bench_train_throughput.py"), "--worker=jax",
                 f"--dtype={args.dtype}", f"--size={float(size)}", f"--devices={os.cpu_count()}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env={**base_env, "XLA_FLAGS": flags})
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"worker with XLA_FLAGS={flags!r} failed to start")
        times: dict[str, list[float]] = {f: [] for f in variants}
        for _ in range(args.rounds):
            for flags, proc in procs.items():
                time.sleep(0.5)  # let the previous worker's spinning threads go idle
                proc.stdin.write(f"{args.steps}\n")
                proc.stdin.flush()
                times[flags].append(float(proc.stdout.readline().split()[0]) / args.steps)
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
        base = np.median(times[""])
        print(f"\nN target {float(size):.0e}, {args.dtype}: median step time and speed vs XLA defaults")
        for flags in variants:
            med = np.median(times[flags])
            spread = (max(times[flags]) - min(times[flags])) / med
            print(f"  {med * 1e3:8.1f} ms  x{base / med:5.2f}  (rounds spread {spread:4.0%})  "
                  f"{flags or '(XLA defaults: what medscale uses)'}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at end; a spread of more than a few percent means the "
          f"machine was not quiet enough to rank variants that close")


if __name__ == "__main__":
    main()
