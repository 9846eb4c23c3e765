"""WSD against cosine on the simulator: same losses? same exponents? how much compute saved?

    .venv/bin/python benchmarks/bench_wsd.py [--quick] [--out DIR] [--no-write]

One decoder IsoFLOP grid on the demo's cohort (the embedded simulator, 8,000 subjects), trained twice per seed:
  cosine  every (size, budget) from scratch, cosine decay to its own end (budgets C0 x 1, 2, 4, 8)
  WSD     one trunk per (size, seed) at the largest budget, a 20% linear cooldown branch per smaller budget
          (scaling/sweep/wsd.py); its budgets are C0 x 1, sqrt2, 2, ..., 8: the cosine grid's four plus three
          half-octaves between them, which cost only their cooldowns
Both run as real sweeps (Ray, 2 concurrent runs of one core each, a shared compilation cache). Printed, and
written to benchmarks/results/wsd-<processor kind>.md:
  * per point of the common grid: the final held-out loss of each seed under each schedule, WSD - cosine
    (mean over seeds, and paired: the same seed has the same initialisation and batches), the seed noise
    |seed0 - seed1| of each schedule, and whether the difference is within it (|diff| <= the larger noise);
    the mean paired difference with its 95% t interval (the bias of WSD, if any)
  * Approach 3 (and 2, where its minima are interior) exponents with 95% bootstrap intervals, fitted as
    `medscale analyze` fits them: cosine, WSD on the same four budgets, WSD on all seven
  * compute: FLOPs (full count) of each plan, their ratio against what the schedule allows (trunk plus
    cooldowns, e.g. 15/9.4 = 1.60 for four doubling budgets), the share of that saving achieved, and the
    measured core-seconds (training steps only, and whole runs with start-up, compilation and evaluation)
  * points per FLOP: the seven-budget WSD grid's (N, D) points per FLOP against the cosine grid's
--quick: 2 sizes x 2 budgets (WSD 3), for a smoke test in a few minutes.
--grid demo: instead of the grid above, the demo's own decoder study (experiments/demo_decoder_isoflop.yaml: 9
sizes, 7 budgets over two decades, 36 points), under its WSD schedule and under cosine per run (medscale's
default warmup, 5% of each run) on the same budgets: does the demo's exponent hold under the schedule it replaced?
Written to benchmarks/results/wsd-demo-<processor kind>.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from medscale.analysis.errors import AnalysisError
from medscale.analysis.isoflop import IsoFlopFit
from medscale.analysis.parametric import ParametricFit
from medscale.atomic import write_text, write_yaml
from medscale.scaling.pipeline import Reporter, SweepFailed, expand_over, launch_sweep, load_spec_and_data
from medscale.scaling.run.processor import processor
from medscale.scaling.sweep.ray_session import ray_session
from medscale.scaling.sweep.results import load_results
from medscale.scaling.sweep.wsd import compute_comparison

ROOT = Path(__file__).resolve().parents[1]

DATASET = {"simulator": {"subjects": 8000, "seed": 0}, "tokenizer": {"min_count": 100, "value_bins": 10}}
# (d_model, n_layers, n_heads): about 26k, 89k and 165k total parameters with the demo's vocabulary, deep-ish
SIZES = [(16, 2, 1), (32, 4, 1), (48, 4, 1)]
C0 = 4e10          # the smallest budget (FLOPs, 6ND with total N)
OCTAVES = 3        # budgets C0 .. C0 * 2**OCTAVES
QUICK = {"sizes": [(16, 2, 1), (32, 4, 1)], "c0": 2e10, "octaves": 1}
COOLDOWN = 0.2


def spec(name: str, schedule: str, sizes, compute: list[float], seeds: list[int]) -> dict:
    return {
        "name": name, "objective": "decoder", "dataset": DATASET,
        "model": {"seq_len": 128, "param_count": "total"},
        "grid": {"mode": "isoflop", "compute": [float(f"{c:.6g}") for c in compute],
                 "params": [{"d_model": d, "n_layers": n, "n_heads": h} for d, n, h in sizes]},
        "seeds": seeds,
        "optimizer": {"batch_size": 16, "lr": 3.0e-3, "lr_scaling": "inverse_width", "base_width": 128,
                      "schedule": schedule, **({"cooldown_fraction": COOLDOWN} if schedule == "wsd" else {})},
        "resources": {"cpus": 1},
        "eval": {"n_evals": 2, "batches": 8},
        "checkpoint": {"every_steps": 1000},
    }


def demo_specs(seeds: list[int]) -> tuple[dict, dict]:
    """The demo's decoder study as shipped (WSD) and the same grid under cosine, both with these seeds."""
    wsd = yaml.safe_load((ROOT / "experiments" / "demo_decoder_isoflop.yaml").read_text())
    wsd.update(name="bench-wsd", seeds=seeds)
    cosine = {**wsd, "name": "bench-cosine",
              "optimizer": {k: v for k, v in wsd["optimizer"].items() if k not in ("cooldown_fraction", "warmup_fraction")}
              | {"schedule": "cosine"}}
    return cosine, wsd


def allowed_ratio(cosine_runs: list[dict], cooldown: float) -> float:
    """Cosine grid's compute over WSD's: per family (a size and seed, with its own budgets), every budget from
    scratch against the largest plus the others' cooldowns."""
    groups: dict = {}
    for r in cosine_runs:
        groups.setdefault((r["model"]["d_model"], r["model"]["n_layers"], r["train"]["seed"]), []).append(r["budget"])
    scratch = sum(sum(b) for b in groups.values())
    return scratch / sum(max(b) + cooldown * (sum(b) - max(b)) for b in groups.values())


def t_interval(x: np.ndarray) -> tuple[float, float, float]:
    m = float(np.mean(x))
    if len(x) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x)))
    return m, m - h, m + h


def fit_exponents(df, n_boot: int) -> dict:
    """Approach 3 and 2 on these runs, as `medscale analyze` fits them (seeds averaged)."""
    out = {}
    reps = {"seeds": df["seed"].to_numpy(), "lrs": df["lr"].to_numpy(dtype=float)}
    try:
        f = ParametricFit(n_boot=n_boot, seed=0).fit(df.params, df.tokens, df.loss, budget=df.budget.to_numpy(),
                                                     **reps)
        out[3] = (f.estimates_, list(f.warnings_))
    except AnalysisError as err:
        out[3] = (None, [str(err)])
    try:
        f = IsoFlopFit(n_boot=n_boot, seed=0).fit(df.params, df.compute, df.loss, budget=df.budget.to_numpy(), **reps)
        out[2] = (f.estimates_, list(f.warnings_))
    except AnalysisError as err:
        out[2] = (None, [str(err)])
    return out


def est(e) -> str:
    if e is None:
        return "n/a"
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]" if np.isfinite(e.low) else f"{e.value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 sizes x 2 budgets: a smoke test")
    parser.add_argument("--grid", choices=["ladder", "demo"], default="ladder",
                        help="ladder: 3 sizes x 4 doubling budgets (default); demo: the demo's decoder study")
    parser.add_argument("--out", type=Path, default=None, help="run store (default: a fresh temporary folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 200; quick 30)")
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds: at least two, to measure seed noise")
    sizes, c0, octaves = (QUICK["sizes"], QUICK["c0"], QUICK["octaves"]) if args.quick else (SIZES, C0, OCTAVES)
    n_boot = args.n_boot if args.n_boot is not None else (30 if args.quick else 200)

    class Say(Reporter):
        def say(self, message: str) -> None:
            print(f"  {message}", flush=True)

    out = args.out or Path(tempfile.mkdtemp(prefix="medscale-bench-wsd-"))
    common = [c0 * 2 ** k for k in range(octaves + 1)]
    dense = [c0 * 2 ** (k / 2) for k in range(2 * octaves + 1)]
    load_start = os.getloadavg()[0]
    specs = {"cosine": spec("bench-cosine", "cosine", sizes, common, args.seeds),
             "wsd": spec("bench-wsd", "wsd", sizes, dense, args.seeds)}
    if args.grid == "demo":
        specs["cosine"], specs["wsd"] = demo_specs(args.seeds)
        common = dense = [float(c) for c in specs["wsd"]["grid"]["compute"]]
        sizes = [(p["d_model"], p["n_layers"], p["n_heads"]) for p in specs["wsd"]["grid"]["params"]]
        c0 = common[0]
    plans, walls = {}, {}
    spec_dir = Path(tempfile.mkdtemp(prefix="medscale-bench-wsd-specs-"))  # --out must hold a run store only
    for kind, s in specs.items():
        path = spec_dir / f"{s['name']}.yaml"
        write_yaml(path, s)
        loaded, prepared = load_spec_and_data(path, out, Say())  # the dataset is prepared once, then shared
        plans[kind] = (loaded, expand_over(loaded, prepared, path))
    with ray_session(num_cpus=args.cores):  # one local Ray for both sweeps, ended however they end
        for kind, (loaded, runs) in plans.items():
            print(f"{kind}: {len(runs)} runs", flush=True)
            t0 = time.time()
            try:
                launch_sweep(loaded, runs, out, max_concurrent=args.cores, reporter=Say())
            except SweepFailed as err:  # the table is made of the runs that finished; say which did not
                print(f"  {err}", flush=True)
            walls[kind] = time.time() - t0

    results, _ = load_results(out)
    done = results[results["status"] == "done"].copy()
    cos = done[done["sweep"] == "bench-cosine"]
    wsd = done[done["sweep"] == "bench-wsd"]
    on_common = lambda df: df[np.isclose(df["budget"].to_numpy()[:, None], common, rtol=1e-6).any(axis=1)]  # noqa: E731
    wsd_common = on_common(wsd)
    wsd_runs = plans["wsd"][1]
    common_runs = [r for r in wsd_runs if any(math.isclose(r["budget"], c, rel_tol=1e-6) for c in common)]
    plan_cos = compute_comparison(plans["cosine"][1])["planned_flops"]
    plan_w4, plan_w7 = (compute_comparison(r)["planned_flops"] for r in (common_runs, wsd_runs))

    # -- per point --------------------------------------------------------------------------------
    key = ["d_model", "n_layers", "budget"]
    s0, s1 = args.seeds[0], args.seeds[1]
    rows, paired, within = [], [], []
    for (d, n, b), g in sorted(cos.groupby(key), key=lambda kv: (kv[0][2], kv[0][0])):
        w = wsd_common[(wsd_common["d_model"] == d) & (wsd_common["n_layers"] == n)
                       & np.isclose(wsd_common["budget"], b, rtol=1e-6)]
        lc = g.set_index("seed")["loss"]
        lw = w.set_index("seed")["loss"]
        if not ({s0, s1} <= set(lc.index) and {s0, s1} <= set(lw.index)):
            continue
        diff = float(lw[[s0, s1]].mean() - lc[[s0, s1]].mean())
        pair = [float(lw[s] - lc[s]) for s in args.seeds if s in lc.index and s in lw.index]  # same seed
        noise_c, noise_w = abs(float(lc[s0] - lc[s1])), abs(float(lw[s0] - lw[s1]))
        ok = abs(diff) <= max(noise_c, noise_w)
        paired += pair
        within.append(ok)
        rows.append(f"| {int(g['params'].iloc[0]):,} | {d}x{n} | {b:.3g} | {int(g['tokens'].iloc[0]):,} | "
                    f"{lc[s0]:.4f} / {lc[s1]:.4f} | {lw[s0]:.4f} / {lw[s1]:.4f} | {diff:+.4f} | "
                    f"{pair[0]:+.4f} / {pair[1]:+.4f} | {noise_c:.4f} / {noise_w:.4f} | {'yes' if ok else 'no'} |")
    bias, lo, hi = t_interval(np.array(paired))

    # -- fits ---------------------------------------------------------------------------------------
    fits = [(f"cosine, {len(common)} budgets", cos), ("WSD, the same budgets", wsd_common)]
    if len(dense) > len(common):
        fits.append((f"WSD, all {len(dense)} budgets", wsd))
    fits = [(name, df, fit_exponents(df, n_boot)) for name, df in fits]

    # -- compute ------------------------------------------------------------------------------------
    def seconds(df, cols):
        return float(df[cols].sum(axis=1).sum())

    whole = [c for c in ("time_startup_s", "time_compile_s", "time_train_s", "time_eval_s", "time_ckpt_s")
             if c in done]
    allowed = allowed_ratio(plans["cosine"][1], COOLDOWN)
    flop_ratio = plan_cos / plan_w4
    share = lambda ratio: (1 - 1 / ratio) / (1 - 1 / allowed)  # noqa: E731 - of the saving the schedule allows
    achieved = share(flop_ratio)
    train_ratio = seconds(cos, ["time_train_s"]) / seconds(wsd_common, ["time_train_s"])
    whole_ratio = seconds(cos, whole) / seconds(wsd_common, whole)
    points_c, points_w = (len(df.groupby(["d_model", "n_layers", "budget"])) for df in (cos, wsd))
    per_flop = (points_w / plan_w7) / (points_c / plan_cos)

    cpu = processor()
    lines = [
        f"# WSD against cosine on the simulator{' (--quick)' if args.quick else ''}",
        "",
        f"processor: {cpu.describe()}; {os.cpu_count()} cores, {args.cores} concurrent runs of one core; "
        f"load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)",
        f"command: {' '.join(['python', 'benchmarks/bench_wsd.py', *sys.argv[1:]])}",
        (f"grid: decoder IsoFLOP, {len(sizes)} sizes x budgets {', '.join(f'{c:.3g}' for c in common)} FLOPs "
         f"(6ND, total N), seeds {args.seeds}, batch 16 x 128, lr 3e-3 x 128/d_model; WSD: linear cooldown over "
         f"the last {COOLDOWN:.0%}, budgets {', '.join(f'{c:.3g}' for c in dense)}") if args.grid == "ladder" else
        (f"grid: the demo's decoder study (experiments/demo_decoder_isoflop.yaml), {len(sizes)} sizes x budgets "
         f"{', '.join(f'{c:.3g}' for c in common)} FLOPs, sizes kept at D/N in [3, 200]; seeds {args.seeds}; "
         f"WSD as the demo runs it (cooldown 20%, warmup 30% of each family's shortest run); cosine per run with "
         f"medscale's default warmup (5% of each run)"),
        "",
        f"| N (total) | shape | budget | D | cosine s{s0} / s{s1} | WSD s{s0} / s{s1} | WSD - cosine (mean) "
        f"| paired s{s0} / s{s1} | seed noise cosine / WSD | within noise |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"WSD - cosine, paired over {len(paired)} (point, seed) pairs: {bias:+.4f} [{lo:+.4f}, {hi:+.4f}] "
        f"(95% t interval); {sum(within)} of {len(within)} points within seed noise "
        f"(|mean difference| <= the larger |s{s0} - s{s1}|)",
        "",
        "| fit | runs | Approach 3 a (N_opt ~ C^a) | alpha | beta | Approach 2 a | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, df, f in fits:
        (e3, w3), (e2, w2) = f[3], f[2]
        why = ([f"A3 not fitted: {w}" for w in w3] if e3 is None else []) + \
            ([f"A2 not fitted: {w}" for w in w2] if e2 is None else [])
        note = "; ".join(why)[:300].replace("|", "/")
        lines.append(f"| {name} | {len(df)} | {est(e3 and e3['a'])} | {est(e3 and e3['alpha'])} | "
                     f"{est(e3 and e3['beta'])} | {est(e2 and e2['a'])} | {note} |")
    lines += [
        "",
        f"compute of the same {len(common)}-budget grid: cosine {plan_cos:.3g} FLOPs, WSD {plan_w4:.3g} FLOPs "
        f"(full count): {flop_ratio:.2f}x; the schedule allows {allowed:.2f}x "
        + (f"({sum(common) / c0:.3g}/{(common[-1] + COOLDOWN * sum(common[:-1])) / c0:.3g}), "
           if args.grid == "ladder" else "(trunk plus cooldowns, summed over each size's own budgets), ") + "so "
        f"{achieved:.0%} of the allowed saving (target >= 90%)",
        f"measured core-seconds, the same grid: training steps {train_ratio:.2f}x ({share(train_ratio):.0%} of the "
        f"allowed saving); whole runs (start-up, compilation, evaluation, checkpoints included) {whole_ratio:.2f}x "
        f"({share(whole_ratio):.0%})",
        f"sweep wall clock: cosine ({len(cos)} runs) {walls['cosine']:.0f} s; WSD ({len(wsd)} runs, "
        f"{len(dense)} budgets) {walls['wsd']:.0f} s",
        f"points per FLOP: WSD with {len(dense)} budgets fits {points_w} (N, D) points from {plan_w7:.3g} FLOPs, "
        f"cosine {points_c} from {plan_cos:.3g}: {per_flop:.2f}x the points for the same compute (target >= 2x)",
        f"store: {out}",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    if not args.no_write:
        path = ROOT / "benchmarks" / "results" / f"wsd{'-quick' if args.quick else ''}{'-demo' if args.grid == 'demo' else ''}-{cpu.kind}.md"
        write_text(path, text)
        print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
