"""Adaptive designs on public tables of real runs: the same targets from a fraction of the cheap runs' compute.

    .venv/bin/python benchmarks/bench_design.py [--n-boot 50] [--seeds 5] [--out benchmarks/results/design.md]

For each table (tests/data/*.md: provenance, licence, the `costly` split), the cheap runs are the pool and the
costly runs the targets (their planned N, D; the loss is the target). At each fraction F of the pool's compute
(6ND summed over the pool): the adaptive replay of analysis/design.py (initial design, refit, batches chosen by
expected reduction of the targets' log-loss variance per FLOP), random selection at the same compute (rows in a
random order, each kept while it fits; `--seeds` orders), and all pool rows. Scored on the targets: mean absolute
% error of the predicted loss (Chinchilla's law, ParametricFit with a bootstrap of runs) and how many targets fall
inside the 95% interval for a new run (bootstrap draws times a noise factor from the fit's residuals). A random
design too small to fit (under 6 runs or 3 distinct N or D) counts as a failure. Wall times with the processor.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import publish  # noqa: E402
from medscale.analysis import design as ds  # noqa: E402
from medscale.analysis.errors import AnalysisError  # noqa: E402
from medscale.scaling.processor import processor  # noqa: E402

DATA = ROOT / "tests" / "data"
FRACTIONS = (0.10, 0.25, 0.50)


def tables() -> dict[str, list[tuple[pd.DataFrame, pd.DataFrame, str]]]:
    """name -> [(cheap pool, costly targets, loss column)] (one group per fit)."""
    g = pd.read_csv(DATA / "gadre2024_overtrain.csv")
    o = pd.read_csv(DATA / "olmo_ladder.csv")
    return {
        "Gadre et al. 2024: 3 sets of ~31 runs (<= 412M) -> 9 runs at 1.4B/6.9B": [
            (g[(g.dataset == s) & ~g.costly], g[(g.dataset == s) & g.costly], "loss_c4_val")
            for s in ("c4_original", "rpj", "rw_original")],
        "OLMo ladder: 30 cheap runs (190M-3.2B) -> 7B-4T, 13B-5T": [(o[~o.costly], o[o.costly], "loss_c4")],
    }


def _score(fit, target, observed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, lo, hi = ds.predict_target(fit, target)
    return np.abs(p / observed - 1) * 100, (lo <= observed) & (observed <= hi), (hi - lo) / p


def _group(cheap, costly, lc, F, n_boot, seeds, batch):
    cheap = cheap.reset_index(drop=True)
    pool = ds.pool_frame(cheap["N"], cheap["D"])
    target, obs = ds.Target.planned(costly["N"], costly["D"]), costly[lc].to_numpy(float)
    budget = F * pool["cost"].sum()
    loss = cheap[lc].to_numpy(float)
    res = {}
    if F < 1:
        rep = ds.replay(pool, lambda r: loss[r], target, budget, batch=batch, n_boot=n_boot)
        res["adaptive"] = [(*_score(rep.fit, target, obs), rep.steps[-1].spent / pool["cost"].sum(),
                            len(rep.chosen))]
        res["random"] = []
        for s in range(seeds):
            rows = ds.random_design(pool, budget, seed=s)
            spent = pool["cost"].to_numpy()[rows].sum() / pool["cost"].sum()
            try:
                fit = ds.fit_revealed(pool, {int(r): loss[r] for r in rows}, n_boot=n_boot, seed=0)
                res["random"].append((*_score(fit, target, obs), spent, len(rows)))
            except AnalysisError:
                res["random"].append((np.full(obs.size, np.nan), np.zeros(obs.size, bool), np.full(obs.size, np.nan),
                                      spent, len(rows)))
    else:
        fit = ds.fit_revealed(pool, dict(enumerate(loss)), n_boot=n_boot, seed=0)
        res["all rows"] = [(*_score(fit, target, obs), 1.0, len(pool))]
    return res


def _cell(runs: list[list[tuple]]) -> str:
    """runs: per seed, per group (err, inside, width, spent, n). MAPE over targets (mean over seeds), inside."""
    mape = [np.concatenate([g[0] for g in seed]) for seed in runs]
    ok = [m for m in mape if np.isfinite(m).all()]
    inside = sum(int(np.concatenate([g[1] for g in seed]).sum()) for seed in runs)
    n = sum(np.concatenate([g[1] for g in seed]).size for seed in runs)
    width = np.mean([np.nanmean(np.concatenate([g[2] for g in seed])) for seed in runs])
    spent = np.mean([np.mean([g[3] for g in seed]) for seed in runs])
    runs_n = np.mean([sum(g[4] for g in seed) for seed in runs])
    fails = len(mape) - len(ok)
    m = f"{np.mean([x.mean() for x in ok]):.2f}%" if ok else "n/a"
    spread = f" (seeds {min(x.mean() for x in ok):.2f}-{max(x.mean() for x in ok):.2f}%)" if len(ok) > 1 else ""
    return (f"{m}{spread} / {inside} of {n} / {width:.1%} / {spent:.1%} in {runs_n:.0f} runs"
            + (f" / {fails} of {len(mape)} too small to fit" if fails else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-boot", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "design.md")
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    t0 = time.time()
    lines = ["# Adaptive designs on public tables: the costly runs' loss from a fraction of the cheap runs' compute", "",
             f"`benchmarks/bench_design.py --n-boot {args.n_boot} --seeds {args.seeds} --batch {args.batch}`. Pool: the "
             "cheap runs; targets: the costly runs (tests/data/*.md). Each cell: targets' mean abs % error (random: "
             "mean over seeds, their range in brackets) / targets inside the 95% interval for a new run (summed over "
             "seeds for random) / mean relative width of that interval / compute spent as a share of the pool's / "
             "runs used. Law: Chinchilla (ParametricFit, bootstrap of runs).", ""]
    for name, groups in tables().items():
        lines += [f"## {name}", "", "| fraction of pool compute | adaptive | random at equal compute | all rows |",
                  "|---|---|---|---|"]
        t1 = time.time()
        full = [[_group(c, t, lc, 1.0, args.n_boot, args.seeds, args.batch)["all rows"][0] for c, t, lc in groups]]
        for F in FRACTIONS:
            per = [_group(c, t, lc, F, args.n_boot, args.seeds, args.batch) for c, t, lc in groups]
            ad = [[g["adaptive"][0] for g in per]]
            rnd = [[g["random"][s] for g in per] for s in range(args.seeds)]
            lines.append(f"| {F:.0%} | {_cell(ad)} | {_cell(rnd)} | {_cell(full)} |")
            print(lines[-1], flush=True)
        lines += ["", f"{time.time() - t1:.0f} s for this table.", ""]
    lines.append(f"Wall time {time.time() - t0:.0f} s on {processor().describe()}, nice 5, beside another job on 2 cores.")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
