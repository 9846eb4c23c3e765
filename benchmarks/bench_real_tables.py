"""medscale's fits on public tables of real runs, beside the authors' published numbers.

    .venv/bin/python benchmarks/bench_real_tables.py [--n-boot 400] [--out benchmarks/results/real_tables.md]

Tables (tests/data/*.md has each one's provenance and licence):
- Porian et al. 2024, 15 IsoFLOP setups: Approach 2's allocation exponent a (the IsoFLOP curve and the plain
  parabola) against the authors' a and interval.
- Muennighoff et al. 2023, 182 runs with repeated data: R*_D and R*_N (joint; two-stage with the published
  base law; without the parameter-excess term) against 15.4 and 5.3.
- Besiroglu et al. 2024 (Epoch AI), the Chinchilla replication: Approach 3's parameters against theirs.
No timing is asserted; the wall time is printed with the processor.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import publish  # noqa: E402
from medscale.scaling.run.processor import processor  # noqa: E402
from medscale.analysis import IsoFlopFit, ParametricFit  # noqa: E402
from medscale.analysis.data_constrained import DataConstrainedFit, _Data, _objective  # noqa: E402

DATA = ROOT / "tests" / "data"
MUENNIGHOFF_BASE = {"E": np.exp(0.6254804), "A": np.exp(6.255414), "B": np.exp(7.3049974), "alpha": 0.3526596,
                    "beta": 0.3526596}
EPOCH = {"E": (1.81686, 1.769, 1.871), "A": (482.006, 285.21, 743.63), "B": (2085.434, 1042.36, 5810.34),
         "alpha": (0.34781, 0.317, 0.373), "beta": (0.36585, 0.331, 0.415)}


def _fmt(e) -> str:
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def porian(n_boot: int) -> list[str]:
    pts = pd.read_csv(DATA / "porian2024_isoflop.csv")
    pub = pd.read_csv(DATA / "porian2024_fits.csv").set_index("setup")
    lines = ["## Porian et al. 2024: allocation exponent a, 15 setups", "",
             "| setup | authors | curve (window 5) | parabola (all sizes) |", "|---|---|---|---|"]
    err = {"curve": [], "parabola": []}
    inside = {"curve": 0, "parabola": 0}
    for setup, g in pts.groupby("setup", sort=False):
        fit = IsoFlopFit(n_boot=n_boot, n_jobs=2).fit(g.n, g.budget_flops, g.loss, budget=g.budget_flops)
        a_pub = pub.loc[setup]
        row = {"curve": fit.estimates_["a"], "parabola": fit.parabola_estimates_["a"]}
        for k, e in row.items():
            err[k].append(e.value - a_pub.a)
            inside[k] += int(e.low <= a_pub.a <= e.high)
        lines.append(f"| {a_pub.label} ({a_pub.dataset}) | {a_pub.a:.3f} [{a_pub.a_lo:.2f}, {a_pub.a_hi:.2f}] | "
                     f"{_fmt(row['curve'])} | {_fmt(row['parabola'])} |")
    lines += [""]
    for k in err:
        e = np.array(err[k])
        lines.append(f"- {k}: |a - authors'| median {np.median(np.abs(e)):.3f}, max {np.abs(e).max():.3f}, "
                     f"lower in {(e < 0).sum()} of {e.size}; authors' a inside the 95% interval in {inside[k]} of "
                     f"{e.size}")
    return lines + [""]


def muennighoff(n_boot: int) -> list[str]:
    d = pd.read_csv(DATA / "muennighoff2023_runs.csv")
    cols = [d[c].to_numpy(float) for c in ("n_params", "tokens", "unique_tokens", "loss")]
    data = _Data.of(*cols)
    w = np.ones(len(d))
    free = np.ones(7, dtype=bool)
    lines = ["## Muennighoff et al. 2023: the data-constrained law, 182 runs", "",
             "Published (two stages, base law fitted to other runs): R*_D = 15.39, R*_N = 5.31, Huber objective "
             "0.0158259.", "", "| fit | R*_D | R*_N | alpha | beta | objective |", "|---|---|---|---|---|---|"]
    fits = {
        "joint, with R*_N": DataConstrainedFit(n_boot=n_boot, n_jobs=2),
        "joint, without R*_N": DataConstrainedFit(n_boot=n_boot, n_jobs=2, excess_params=False),
        "two-stage, published base": DataConstrainedFit(n_boot=n_boot, n_jobs=2, two_stage=True,
                                                        base=MUENNIGHOFF_BASE),
    }
    for name, f in fits.items():
        f.fit(*cols)
        theta = f.theta_ if f.excess_params else np.r_[f.theta_[:6], np.log(1e4)]
        obj = _objective(data.centre(theta), data, w, 1e-3, free)[0] if f.excess_params else float("nan")
        rn = _fmt(f.estimates_["R_star_N"]) if "R_star_N" in f.estimates_ else "-"
        lines.append(f"| {name} | {_fmt(f.estimates_['R_star_D'])} | {rn} | {f.params_['alpha']:.3f} | "
                     f"{f.params_['beta']:.3f} | {obj:.7f} |")
    return lines + [""]


def epoch(n_boot: int) -> list[str]:
    d = pd.read_csv(DATA / "besiroglu2024_chinchilla.csv")
    d = d[d.in_fit]
    f = ParametricFit(n_boot=n_boot, n_jobs=2).fit(d.n_params, d.tokens, d.loss)
    lines = ["## Besiroglu et al. 2024 (Epoch AI): Approach 3 on the Chinchilla replication, 240 points", "",
             "| parameter | Epoch AI (4,000 resamples) | medscale |", "|---|---|---|"]
    for k, (v, lo, hi) in EPOCH.items():
        e = f.estimates_[k]
        lines.append(f"| {k} | {v:.4g} [{lo:.4g}, {hi:.4g}] | {e.value:.4g} [{e.low:.4g}, {e.high:.4g}] |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_tables.md")
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    t0 = time.time()
    lines = ["# medscale on public tables of real runs", "",
             f"`benchmarks/bench_real_tables.py --n-boot {args.n_boot}`; 95% bootstrap intervals.", ""]
    lines += porian(args.n_boot) + muennighoff(args.n_boot) + epoch(args.n_boot)
    lines.append(f"Wall time {time.time() - t0:.0f} s on {platform.processor() or platform.machine()} "
                 f"({processor().describe()}).")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
