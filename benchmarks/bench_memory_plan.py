"""Memory per device of the train step at the sizes our users study, planned by scaling/plan/memory.py
(an AOT compile of the real step on fake host devices: nothing is allocated), in GiB.

    .venv/bin/python benchmarks/bench_memory_plan.py              # everything (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_memory_plan.py --only 400m  # one section: 400m, 1b, presets, real

Sections, each against the figure it must beat, measured in the same run:
  400m     a 400M decoder, batch 64 x 1,024, bf16, one device: the plain path (today), the attention
           share (twice what halving the sequence at fixed tokens saves), what flash attention removes
           of that share (target >= 90%), and flash + remat against today (target >= 4x less).
  1b       a 1B decoder (CoMET size), batch 64 x 1,024, bf16, 8 devices (fsdp): target <= 40 GiB.
  presets  every run of experiments/cluster_*.yaml against its device budget (an 80 GB GPU).
  real     the planner's peak against a real CPU run's measured peak (resident memory sampled while
           the steps run), for docs/MEMORY.md.
Figures are cached by shape under --cache (default /tmp/medscale-memory-plans): a rerun is quick.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VOCAB = 4096  # the dry run's vocabulary (scaling/pipeline.py DRY_RUN_VOCAB)


def _run(cfg, B, L, mesh=None, **options) -> dict:
    from medscale.scaling.plan.memory import plan_run

    return plan_run(cfg.to_dict(), B, L, mesh, **options)


def _plan(runs, devices, backend, cache):
    from medscale.scaling.plan.memory import estimate_memory

    t = time.time()
    out = estimate_memory(runs, devices=devices, backend=backend, cache_dir=cache)
    return out, time.time() - t


def _gib(x) -> str:
    return f"{x / 2**30:8.2f}"


def section_400m(cache) -> bool:
    from medscale.models.config import shape_for_params

    cfg = shape_for_params(4e8, vocab_size=VOCAB, max_len=1024)
    print(f"\n## 400M decoder {cfg.d_model} x {cfg.n_layers} ({cfg.n_heads} heads), batch 64 x 1,024, bf16, 1 GPU-like device")
    variants = [("today: attention xla, no remat", _run(cfg, 64, 1024, attention="xla")),
                ("today at half length (128 x 512)", _run(cfg, 128, 512, attention="xla")),
                ("attention flash", _run(cfg, 64, 1024, attention="flash")),
                ("flash + remat full (layers scanned)", _run(cfg, 64, 1024, attention="flash", remat="full")),
                ("attention flash at half length", _run(cfg, 128, 512, attention="flash"))]
    est, secs = _plan([r for _, r in variants], 1, "gpu", cache)
    print(f"{'variant':40s} {'params':>8s} {'opt':>8s} {'temp':>8s} {'peak':>8s}  (GiB per device; planned in {secs:.0f}s)")
    for (name, _), e in zip(variants, est):
        print(f"{name:40s} {_gib(e.params)} {_gib(e.opt_state)} {_gib(e.temporaries)} {_gib(e.peak)}")
    today, half, flash, full, flash_half = (e.temporaries for e in est)
    attention_share = 2 * (today - half)  # temp(L) = rest + A, temp(L/2) at the same tokens = rest + A/2
    removed = (today - flash) / attention_share
    print(f"attention share of today's {today / 2**30:.0f} GiB: {attention_share / 2**30:.0f} GiB; flash removes "
          f"{removed:.0%} of it (target >= 90%)")
    print(f"flash's share (the same measure): {2 * (flash - flash_half) / 2**30:.1f} GiB (0: nothing of it grows "
          f"with the sequence length at a fixed token count); what flash keeps beyond the plain path's "
          f"length-independent part: {(flash - (today - attention_share)) / 2**30:.1f} GiB")
    print(f"today / (flash + remat full): {today / full:.1f}x less temporary memory (target >= 4x); "
          f"peak {est[0].peak / est[3].peak:.1f}x")
    return removed >= 0.9 and today / full >= 4


def section_1b(cache) -> bool:
    from medscale.models.config import param_counts, shape_for_params

    cfg = shape_for_params(1e9, vocab_size=VOCAB, max_len=1024)
    n = param_counts(cfg)
    print(f"\n## 1B decoder {cfg.d_model} x {cfg.n_layers} ({cfg.n_heads} heads, {n.total / 1e9:.2f}B params), "
          "batch 64 x 1,024, bf16, 8 devices (fsdp 8)")
    variants = [("flash + remat full", _run(cfg, 64, 1024, mesh={"fsdp": 8}, attention="flash", remat="full"))]
    est, secs = _plan([r for _, r in variants], 8, "gpu", cache)
    print(f"{'variant':40s} {'params':>8s} {'opt':>8s} {'temp':>8s} {'peak':>8s}  (GiB per device; planned in {secs:.0f}s)")
    for (name, _), e in zip(variants, est):
        print(f"{name:40s} {_gib(e.params)} {_gib(e.opt_state)} {_gib(e.temporaries)} {_gib(e.peak)}")
    best = min(e.peak_gib for e in est)
    print(f"best: {best:.1f} GiB per device (target <= 40)")
    return best <= 40


def section_presets(cache) -> bool:
    from medscale.scaling.pipeline import DRY_RUN_VOCAB, Plan, plan_memory
    from medscale.scaling.sweep.spec import expand, load_spec

    ok = True
    for path in sorted((ROOT / "experiments").glob("cluster_*.yaml")):
        spec = load_spec(path)
        runs = expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source=str(path))
        rows = [{"run": i, "shape": "{d_model} x {n_layers}".format(**r["model"])} for i, r in enumerate(runs)]
        t = time.time()
        plan = plan_memory(Plan(rows, 0, "", 0, ""), runs, spec.resources, cache)
        print(f"\n## {path.name}: {len(runs)} runs, options {runs[0].get('options', {})}, budget "
              f"{plan.budget_gib} GiB ({plan.budget_source}); planned in {time.time() - t:.0f}s")
        print(f"{'shape':>14s} {'batch':>10s} {'params':>8s} {'opt':>8s} {'temp':>8s} {'peak':>8s} fits")
        seen = set()
        for row, run in zip(plan.rows, runs):
            if row["shape"] in seen:
                continue
            seen.add(row["shape"])
            fits = plan.budget_gib is not None and row["mem_peak_gib"] <= plan.budget_gib
            ok &= fits
            print(f"{row['shape']:>14s} {run['data']['batch_size']:>4d} x {run['data']['seq_len']:<4d} "
                  f"{row['mem_params_gib']:8.2f} {row['mem_opt_gib']:8.2f} {row['mem_temp_gib']:8.2f} "
                  f"{row['mem_peak_gib']:8.2f} {'yes' if fits else 'NO'}")
    return ok


REAL = r"""
import json, sys, threading, time
import jax, numpy as np
from medscale.models.config import ModelConfig
from medscale.models.options import ModelOptions
from medscale.models.sharding import make_mesh
from medscale.models.step import init_train_state, make_train_step
from medscale.scaling.run.train import make_optimizer

cfg, B, L, options = ModelConfig(**json.loads(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
mesh = make_mesh(devices=jax.devices()[:1])
tx, _ = make_optimizer({"lr": 1e-3}, 100)
opts = ModelOptions(**options)
rng = np.random.default_rng(0)
toks = rng.integers(0, cfg.vocab_size, (B, L)).astype(np.int32)
batch = {"inputs": toks, "targets": toks, "weights": np.ones((B, L), np.float32), "segment_ids": np.zeros((B, L), np.int32)}
from medscale.models.step import abstract_train_state
graphdef, abstract = abstract_train_state(cfg, tx, mesh, options=opts)
step = make_train_step(graphdef, tx, mesh)
step.lower(abstract, B, L).compile()       # compile first: the sampled peak is the step's, not the compiler's
base = rss()
peak = [base]
stop = False
def sample():
    while not stop:
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
t = threading.Thread(target=sample); t.start()
_, state = init_train_state(cfg, tx, mesh, options=opts)
for _ in range(3):
    state, m = step(state, batch)
    jax.block_until_ready(m)
stop = True; t.join()
print(json.dumps({"measured_peak": peak[0] - base}))
"""


def section_real(cache) -> bool:
    from medscale.models.config import ModelConfig
    from medscale.scaling.plan.memory import estimate_memory

    cases = [(ModelConfig(vocab_size=VOCAB, d_model=256, n_layers=4, n_heads=8, d_ff=704, max_len=1024), 8, 1024,
              {"attention": "xla"}),
             (ModelConfig(vocab_size=VOCAB, d_model=256, n_layers=4, n_heads=8, d_ff=704, max_len=1024), 8, 1024,
              {"attention": "flash", "remat": "full"})]
    print("\n## planner against a real CPU run (float32, 1 device): resident memory sampled during 3 steps, "
          "minus the resident memory after compilation")
    print(f"{'case':48s} {'planned':>9s} {'measured':>9s} {'ratio':>6s}")
    ok = True
    for cfg, B, L, options in cases:
        (est,) = estimate_memory([_run(cfg, B, L, **options)], devices=1, backend="cpu", cache_dir=cache)
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["JAX_PLATFORMS"] = "cpu"
        done = subprocess.run([sys.executable, "-c", REAL, json.dumps(cfg.to_dict()), str(B), str(L),
                               json.dumps(options)], env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            print(done.stderr[-2000:])
            return False
        measured = json.loads(done.stdout.strip().splitlines()[-1])["measured_peak"]
        name = f"{cfg.d_model} x {cfg.n_layers}, {B} x {L}, {options}"
        print(f"{name:48s} {_gib(est.peak)} {_gib(measured)} {measured / est.peak:6.2f}")
        ok &= 0.5 < measured / est.peak < 1.5
    return ok


SECTIONS = {"400m": section_400m, "1b": section_1b, "presets": section_presets, "real": section_real}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medscale-memory-plans"))
    args = parser.parse_args()
    from medscale.scaling.run.processor import processor

    cpu = processor().describe()
    print(f"memory planner benchmark on {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results = {}
    for name in args.only or list(SECTIONS):
        results[name] = SECTIONS[name](args.cache)
    print("\n" + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
