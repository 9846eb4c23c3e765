"""Sweep efficiency: the share of a sweep's core-seconds spent inside training steps.

    .venv/bin/python benchmarks/bench_sweep_efficiency.py [--tokens 3M 4M] [--out DIR]

Runs a real sweep (Ray, local; 2 concurrent runs, each pinned to its own core, a shared compilation
cache) of 2 shapes x 2 token budgets sized to a minute or more each, then splits every run's
wall time into start-up, compilation, training steps, evaluation and checkpoints, and compares the
training core-seconds with the core-seconds the sweep held (wall time of the whole launch, Ray start
and scheduling included, times the cores used). Dataset preparation happens before the clock starts.
The goal is >= 85%; the second budget of each shape shows the compilation cache hitting.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

SPEC = """
name: efficiency
objective: decoder
dataset:
  simulator: {{subjects: 8000, seed: 0}}
  tokenizer: {{min_count: 100, value_bins: 10}}
model: {{seq_len: 128, param_count: total}}
grid:
  mode: ladder
  params: [{{d_model: 32, n_layers: 2, n_heads: 1}}, {{d_model: 24, n_layers: 3, n_heads: 1}}]
  tokens: [{tokens}]
optimizer: {{batch_size: 16, lr: 3.0e-3}}
resources: {{cpus: 1}}
eval: {{n_evals: 4, batches: 8}}
checkpoint: {{every_steps: 500}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", nargs="+", default=["3M", "4M"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    from medscale.scaling.sweep.dataset import prepare_dataset
    from medscale.scaling.sweep.scheduler import run_sweep
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.sweep.store import RunStore

    out = args.out or Path(tempfile.mkdtemp(prefix="medscale-efficiency-"))
    spec = parse_spec(yaml.safe_load(SPEC.format(tokens=", ".join(args.tokens))))
    prepared = prepare_dataset(spec, out)
    runs = expand(spec, token_dir=str(prepared.token_dir), vocab_size=prepared.vocab_size,
                  dataset_id=prepared.dataset_id)
    store = RunStore(out)
    run_dirs = [store.ensure(r) for r in runs]
    t0 = time.time()
    results = run_sweep(store, run_dirs, cpus=1, max_concurrent=args.cores)
    wall = time.time() - t0

    cols = ["time_startup_s", "time_compile_s", "time_train_s", "time_eval_s", "time_ckpt_s"]
    table = results[["run_id", "d_model", "n_layers", "tokens", "tokens_per_sec", "mfu", *cols]].copy()
    table["run_s"] = table[cols].sum(axis=1)
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    held = wall * args.cores
    train = float(results["time_train_s"].sum())
    print(f"\nsweep wall {wall:.1f}s x {args.cores} cores = {held:.1f} core-s held")
    for c in cols:
        print(f"  {c:<16} {results[c].sum():8.1f} core-s  ({results[c].sum() / held:6.1%})")
    other = held - results[cols].sum().sum()
    print(f"  {'scheduling/idle':<16} {other:8.1f} core-s  ({other / held:6.1%})")
    print(f"\ntraining-step share: {train / held:.1%}   (goal 85%: ratio {train / held / 0.85:.2f})")
    print(f"runs of {results['run_s'].min() if 'run_s' in results else table['run_s'].min():.0f}-{table['run_s'].max():.0f}s; "
          f"load average {os.getloadavg()[0]:.2f} at the end; store {out}")


if __name__ == "__main__":
    main()
