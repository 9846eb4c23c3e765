"""Adaptive designs against the full grid, random and cheapest-first selection at equal compute (issue 32, item 3).

    .venv/bin/python benchmarks/bench_design.py                      # both arms, the defaults (~30 min CPU)
    .venv/bin/python benchmarks/bench_design.py --arm sim --studies 4 --variants 1:0,0.5:0,1:0.01   # compare arms
    .venv/bin/python benchmarks/bench_design.py --farseer --n-boot 50 --seeds 5              # bigger: + Farseer
    .venv/bin/python benchmarks/bench_design.py --arm tables --heldout --seeds 8 --variants 0.5:0,0.5:0:0.02:2
    .venv/bin/python benchmarks/bench_design.py --arm sim --first-study 3 --variants 0.5:0,0.5:0:0.02:2  # held out
    .venv/bin/python benchmarks/bench_design.py --arm tables --tables porian --heldout --seeds 8           # held out
    .venv/bin/python benchmarks/bench_design.py --arm tables --tables besiroglu,muennighoff --farseer --seeds 8 \
        --variants 0.5:0/bootstrap,0.5:0/bias                     # the tables first replayed in the fourth session
    .venv/bin/python benchmarks/bench_design.py --arm sim --kinds data-constrained --seeds 8 \
        --variants 0.5:0/bias,0.5:0/bootstrap                     # the data-constrained ladder (~12 min a study pair)

Arm (a), the simulator: seeded studies from benchmarks/bench_coverage.py (`study`): the Chinchilla-like IsoFLOP
grid (9 budgets over 2.7 decades x 9 sizes, 81 runs) and the demo-like one (7 budgets over 2 decades, 4-6
sizes per budget), each on a surface of the fitted form (`law`, parameters drawn per study) and on a
misspecified one (Farseer-like or curved powers), with 0.5-1.5% log-normal run noise; `--kinds data-constrained`
(not by default: slow fits) the repeated-data ladder (5 sizes x 4 token budgets x 3 unique-token sets, 60 runs,
the data-constrained law fitted). The pool is the grid (cost 6ND per run), the target N_opt at 10x the grid's
largest budget (unconstrained), the truth the true surface's minimum on 6ND = C. Scored: |N_opt / truth - 1| and
the 95% interval's width relative to the truth (Chinchilla fit, ParametricFit, or the data-constrained one;
bootstrap of runs).

Arm (b), replays on public tables (tests/data/*.md: provenance, licence, the `costly` split): the cheap runs
are the pool, the costly runs the targets (their planned N, D; loss revealed only for scoring). Gadre et al. 2024
and the OLMo ladder by default; `--tables porian` adds Porian et al. 2024's IsoFLOP grids (one group per setup,
each setup's two largest budgets costly, each run costing its budget): the 5 OpenWebText2 setups reported, the
10 RefinedWeb ones with `--heldout`; `--tables besiroglu,muennighoff` (fresh(): Chinchilla's runs as Besiroglu et
al. 2024 read them, >= 1e21 FLOPs costly; Muennighoff et al. 2023's repeated-data runs, N >= 4e9 costly, the
data-constrained law) and `--farseer`. Scored: mean absolute % error of the predicted loss over the costly runs
(MAPE) and R^2 = 1 - SS_res / SS_tot over them (pooled over a table's groups, as benchmarks/bench_families.py
does).

At each fraction F of the pool's compute (its runs' costs summed: 6ND, or each run's budget on Porian's grids):
the adaptive replay of analysis/design.py (its initial design, refit, batches by the expected reduction of the
log target's error per FLOP^gamma: `/bias` its squared error under a smooth discrepancy,
`/bias=ratio:length[:draws]` that discrepancy's variance in units of the run noise, its length in decades and how
many bootstrap draws the criterion is also linearised at and averaged over; `/delta` or `/bootstrap` its
variance, from the delta method at the fit's point or from the bootstrap draws, each candidate's noise raised by
(tau x decades below the target's compute)^2, optionally a discrepancy shared by runs near each other in compute,
sd sigma, correlation length ell decades; `@rho` opens each batch with the run nearest the target costing at most
rho x the compute left; `^none|bootstrap|spread` says what chooses a batch while the fit has E, alpha or beta
at its bound (design.AT_BOUNDS); `--variants gamma:tau[:sigma:ell][/scoring][@rho][^at_bound],...`), random selection at the same compute (rows in a random order,
each kept while it fits; `--seeds` orders: mean and range, and below each table how many orders each adaptive arm
beats), cheapest first (rows from the cheapest up while they fit) and the full grid (F = 100%). A design too small
to fit (under 6 runs or 3 distinct N or D; the adaptive replay when its initial design costs more than F) counts
as a failure and is named in the cell. Wall times with the processor. `--heldout` replays the tables' other loss
columns (HELDOUT) and Porian et al.'s RefinedWeb setups instead: defaults are chosen there and on simulator studies seeded apart, never on the reported
columns.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_file import publish  # noqa: E402
from medscale.analysis import design as ds  # noqa: E402
from medscale.analysis.errors import AnalysisError  # noqa: E402
from medscale.scaling.run.processor import processor  # noqa: E402

DATA = ROOT / "tests" / "data"
FRACTIONS = (0.01, 0.05, 0.10, 0.20)
SIM_KINDS = ("isoflop-chinchilla", "isoflop-demo", "data-constrained")  # a kind's index seeds its studies
DEFAULT_SIM_KINDS = SIM_KINDS[:2]  # the data-constrained ladder (5 N x 4 D x 3 U) when asked: slow fits
SIM_SCENARIOS = ("law", "misspecified")


# ------------------------------------------------------------------------------------------------------------
# the arms: one fit per design (None: too small to fit)
# ------------------------------------------------------------------------------------------------------------
def _fit(pool, loss, rows, n_boot):
    try:
        return ds.fit_revealed(pool, {int(r): float(loss[r]) for r in rows}, n_boot=n_boot, seed=0)
    except (AnalysisError, ValueError):
        return None


def designs(pool, loss, target, F, *, n_boot, seeds, batch, variants, families=None) -> dict[str, list]:
    """arm -> [(fit or None, compute spent as a share of the pool's, runs)] (random: one per seed)."""
    cost, total = pool["cost"].to_numpy(), pool["cost"].sum()
    share = lambda rows: cost[np.asarray(rows, dtype=int)].sum() / total  # noqa: E731
    if F >= 1:
        rows = np.arange(len(pool))
        return {"full": [(_fit(pool, loss, rows, n_boot), 1.0, len(rows))]}
    out = {}
    for v in variants:
        try:
            rep = ds.replay(pool, lambda r: float(loss[r]), target, F * total, batch=batch, n_boot=n_boot,
                            families=families, **v.options())
            out[v.name] = [(rep.fit, share(rep.chosen["row"]), len(rep.chosen))]
        except AnalysisError:  # its initial design does not fit in F
            out[v.name] = [(None, 0.0, 0)]
    out["random"] = []
    for s in range(seeds):
        rows = ds.random_design(pool, F * total, seed=s)
        out["random"].append((_fit(pool, loss, rows, n_boot), share(rows), len(rows)))
    rows = ds.cheapest_first_design(pool, F * total)
    out["cheapest-first"] = [(_fit(pool, loss, rows, n_boot), share(rows), len(rows))]
    return out


@dataclass(frozen=True)
class Variant:
    """One adaptive arm, parsed once from --variants (`_variant`): replay()'s options and the arm's name."""
    gamma: float
    tau: float
    sigma: float
    ell: float
    scoring: str  # as written: a name from design.SCORINGS, "bias" optionally with "=ratio:length[:draws]"
    rho: float
    at_bound: str | None = None  # design.AT_BOUNDS: what chooses a batch where the fit is at a bound (None: default)

    def options(self) -> dict:
        scoring, _, bias = self.scoring.partition("=")
        ratio, _, length = bias.partition(":")
        length, _, draws = length.partition(":")
        return dict(cost_exponent=self.gamma, scale_discount=self.tau, shared_discrepancy=self.sigma,
                    discrepancy_length=self.ell, scoring=scoring, anchor_share=self.rho,
                    bias_ratio=float(ratio) if ratio else None, bias_length=float(length) if length else None,
                    bias_draws=int(draws) if draws else None, at_bound=self.at_bound)

    @property
    def name(self) -> str:
        scoring = "" if self.scoring == ds.SCORING else f", {self.scoring} scoring"
        anchor = f", anchor {self.rho:g}" if self.rho else ""
        shared = f", sigma {self.sigma:g}, ell {self.ell:g}" if self.sigma else ""
        bound = f", {self.at_bound} at a bound" if self.at_bound else ""
        return f"adaptive (gamma {self.gamma:g}, tau {self.tau:g}{shared}{scoring}{anchor}{bound})"


def _arms(args) -> list[str]:
    return [v.name for v in args.variants] + ["random", "cheapest-first"]


# ------------------------------------------------------------------------------------------------------------
# arm (a): the simulator
# ------------------------------------------------------------------------------------------------------------
def sim(args) -> tuple[list[str], dict]:
    from bench_coverage import study  # noqa: E402 - the coverage benchmark's surfaces and grids

    lines, summary = [], {}
    for kind in args.kinds:
        res = {}  # (F, arm) -> per study: list over seeds of (err %, width %, spent, runs) or None
        t0 = time.time()
        for scen in SIM_SCENARIOS:
            for i in range(args.first_study, args.first_study + args.studies):
                st = study(kind, scen, seed=10_007 * (SIM_KINDS.index(kind) + 1) + 101 * SIM_SCENARIOS.index(scen) + i,
                           n_boot=args.n_boot)
                tab = st["table"]
                C, _ = tab.attrs["targets"]["N_opt@10x"]
                truth = st["truth"]["N_opt@10x"]
                pool = ds.pool_frame(tab["params"], tab["tokens"], tab.get("unique_tokens"))
                target = ds.Target.n_opt(C)
                loss = tab["loss"].to_numpy(float)
                for F in (*args.fractions, 1.0):
                    for arm, runs in designs(pool, loss, target, F, n_boot=args.n_boot, seeds=args.seeds,
                                             batch=args.batch, variants=args.variants,
                                             families=args.families).items():
                        cell = []
                        for fit, spent, n in runs:
                            if fit is None:
                                cell.append(None)
                                continue
                            p, lo, hi = ds.predict_target(fit, target)
                            cell.append((abs(p[0] / truth - 1) * 100, (hi[0] - lo[0]) / truth * 100, spent, n))
                        res.setdefault((F, arm), []).append(cell)
                print(f"  {kind} {scen} study {i}: {time.time() - t0:.0f} s", flush=True)
        arms = _arms(args)
        n_st = args.studies * len(SIM_SCENARIOS)
        # which studies (the reported runs start at 0; which are held out is the caller's: design.md says)
        held = f", studies {args.first_study}-{args.first_study + args.studies - 1}" if args.first_study else ""
        start = len(lines)
        lines += [f"### {kind}: {n_st} studies ({args.studies} per scenario: law, misspecified{held})", ""]
        lines += _fraction_table(res, arms, args.fractions, _sim_cell, ("grid", "full grid"), summary, ("sim", kind))
        lines += ["", f"{time.time() - t0:.0f} s for {kind}.", ""]
        print("\n".join(lines[start:]), flush=True)
    return lines, summary


def _fraction_table(res: dict, arms: list[str], fractions, cell, names: tuple[str, str], summary: dict,
                    key: tuple) -> list[str]:
    """One row per fraction of the compute: each arm's cell, then the full grid's; the cells' numbers go into
    `summary[key + (fraction,)]`."""
    lines = [f"| fraction of the {names[0]}'s compute | " + " | ".join(arms) + f" | {names[1]} |",
             "|---" * (len(arms) + 2) + "|"]
    full = cell(res[(1.0, "full")])
    for F in fractions:
        cells = [cell(res[(F, a)]) for a in arms]
        lines.append(f"| {F:.0%} | " + " | ".join(c[0] for c in cells) + f" | {full[0]} |")
        summary[key + (F,)] = {a: c[1] for a, c in zip(arms, cells)} | {"full": full[1]}
    return lines + _beaten(res, arms, fractions, key[0])


def _beaten(res: dict, arms: list[str], fractions, kind: str) -> list[str]:
    """How many random orders each adaptive arm beats at each fraction, order by order (on the simulator per study
    and order): the mean in a cell hides how often random selection would have done better."""
    lines = ["", "Random orders each adaptive arm beats (" + ("per study and order; " if kind == "sim" else "")
             + "an order too small to fit counts as beaten):", ""]
    for arm in (a for a in arms if a.startswith("adaptive")):
        parts = []
        for F in fractions:
            if kind == "sim":
                A, R = _sim_errors(res[(F, arm)]), _sim_errors(res[(F, "random")])
                pairs = [(A[i][0], r) for i in range(len(A)) for r in R[i]]
            else:
                a, = _table_errors(res[(F, arm)])
                pairs = [(a, r) for r in _table_errors(res[(F, "random")])]
            wins = sum(r is None or (a is not None and a < r) for a, r in pairs)
            parts.append(f"{F:.0%} {wins} of {len(pairs)}")
        lines.append(f"- {arm}: " + ", ".join(parts))
    return lines


def _sim_errors(per_study: list[list]) -> list[list]:
    return [[None if c is None else c[0] for c in cells] for cells in per_study]


def _table_errors(per_seed: list[list]) -> list:
    """Each order's MAPE over all costly runs (None where a group was too small to fit)."""
    out = []
    for groups in per_seed:
        if any(g is None for g in groups):
            out.append(None)
            continue
        out.append(_mape(*_pooled(groups)))
    return out


def _pooled(groups: list) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, observed) over all of a table's costly runs, its groups concatenated."""
    return np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups])


def _mape(p: np.ndarray, o: np.ndarray) -> float:
    return float(np.mean(np.abs(p / o - 1)) * 100)


def _sim_cell(per_study: list[list]) -> tuple[str, float]:
    """per study, per seed: (err, width, spent, runs) or None. Mean |error| over studies (random: per seed, then
    mean and range over seeds) / median relative width / compute spent / runs; failures counted."""
    seeds = max(len(c) for c in per_study)
    errs, widths, spent, runs, fails = [], [], [], [], 0
    for s in range(seeds):
        got = [c[s] for c in per_study if s < len(c)]
        ok = [g for g in got if g is not None]
        fails += len(got) - len(ok)
        if ok:
            errs.append(np.mean([g[0] for g in ok]))
            widths += [g[1] for g in ok]
            spent += [g[2] for g in ok]
            runs += [g[3] for g in ok]
    if not errs:
        return f"n/a ({fails} too small to fit)", np.nan
    m = float(np.mean(errs))
    rng = f" ({min(errs):.1f}-{max(errs):.1f})" if len(errs) > 1 else ""
    fail = f" / {fails} of {len(per_study) * seeds} too small" if fails else ""
    return (f"{m:.1f}%{rng} / {np.median(widths):.0f}% / {np.mean(spent):.1%} in {np.mean(runs):.0f}" + fail), m


# ------------------------------------------------------------------------------------------------------------
# arm (b): public tables
# ------------------------------------------------------------------------------------------------------------
HELDOUT = {"gadre": ("loss_paloma_falcon-refinedweb", "loss_openlm"), "olmo": ("loss_pile_last", "loss_wikitext103_last")}


def tables(farseer: bool, heldout: bool = False, which=("gadre", "olmo", "porian")) -> dict[str, list]:
    """name -> [(cheap pool, costly targets, loss column)] (one group per fit). `heldout`: the tables' other loss
    columns (HELDOUT), on which defaults are chosen, instead of the reported ones (Gadre et al. C4, OLMo C4)."""
    g = pd.read_csv(DATA / "gadre2024_overtrain.csv")
    o = pd.read_csv(DATA / "olmo_ladder.csv")
    if heldout:
        out = porian(heldout) if "porian" in which else {}
        if "gadre" in which:
            for c in HELDOUT["gadre"]:
                out[f"held out: Gadre et al. 2024, {c}"] = [
                    (g[(g.dataset == s) & ~g.costly], g[(g.dataset == s) & g.costly], c)
                    for s in ("c4_original", "rpj", "rw_original")]
        if "olmo" in which:
            for c in HELDOUT["olmo"]:
                out[f"held out: OLMo ladder, {c}"] = [(o[~o.costly], o[o.costly], c)]
        return out
    out = {
        "Gadre et al. 2024: 3 sets of ~31 runs (<= 412M) -> 9 runs at 1.4B/6.9B": [
            (g[(g.dataset == s) & ~g.costly], g[(g.dataset == s) & g.costly], "loss_c4_val")
            for s in ("c4_original", "rpj", "rw_original")],
        "OLMo ladder: 30 cheap runs (190M-3.2B) -> 7B-4T, 13B-5T": [(o[~o.costly], o[o.costly], "loss_c4")],
    }
    out = {k: v for k, v in out.items() if ("gadre" in which and k.startswith("Gadre"))
           or ("olmo" in which and k.startswith("OLMo"))}
    if "porian" in which:
        out |= porian(heldout)
    out |= fresh(which)
    if farseer:
        f = pd.read_csv(DATA / "farseer2025.csv")
        out["Farseer grid (Li et al. 2025): 366 runs with N <= 3.8B -> 34 runs with N > 4e9 (bits/char)"] = [
            (f[~f.costly], f[f.costly], "bpc_en")]
    return out


def porian(heldout: bool) -> dict[str, list]:
    """Porian et al. 2024's IsoFLOP grids (tests/data/porian2024.md), one group per setup: the two largest budgets
    are the costly runs, the smaller budgets the pool (each run costs its budget). The RefinedWeb setups are held
    out (defaults are chosen there), the OpenWebText2 ones reported."""
    p = pd.read_csv(DATA / "porian2024_isoflop.csv").rename(columns={"n": "N", "tokens": "D", "budget_flops": "cost"})
    groups = []
    for setup, g in p.groupby("setup", sort=True):
        if setup.startswith("rw_") != heldout:
            continue
        costly = g["cost"] >= np.sort(g["cost"].unique())[-2]
        groups.append((g[~costly], g[costly], "loss"))
    which = "RefinedWeb" if heldout else "OpenWebText2"
    n = len(groups)
    return {f"{'held out: ' if heldout else ''}Porian et al. 2024: {n} {which} IsoFLOP setups (budgets from "
            f"1.25e16 FLOPs, x2 each) -> each setup's two largest budgets": groups}


def fresh(which) -> dict[str, list]:
    """Tables no adaptive arm was run on before the fourth session (named in `which`; not in the default set).
    The split was fixed before any replay on them. Besiroglu et al. 2024's reading of Chinchilla's Figure 4: the
    240 runs the authors fitted (their 5 outliers dropped); the runs at >= 1e21 FLOPs are the costly ones, the rest
    the pool (each run costs its FLOPs). Muennighoff et al. 2023's data-constrained runs: N >= 4e9 costly, the rest
    the pool, unique tokens given (the data-constrained law; cost 6ND)."""
    out = {}
    if "besiroglu" in which:
        b = pd.read_csv(DATA / "besiroglu2024_chinchilla.csv")
        b = b[b.in_fit].rename(columns={"n_params": "N", "tokens": "D", "flops": "cost"})
        costly = b["cost"] >= 1e21
        out[f"Besiroglu et al. 2024 (Chinchilla, Fig. 4): {int((~costly).sum())} runs < 1e21 FLOPs -> "
            f"{int(costly.sum())} runs >= 1e21"] = [(b[~costly], b[costly], "loss")]
    if "muennighoff" in which:
        m = pd.read_csv(DATA / "muennighoff2023_runs.csv").rename(
            columns={"n_params": "N", "tokens": "D", "unique_tokens": "U"})
        costly = m["N"] >= 4e9
        out[f"Muennighoff et al. 2023 (repeated data): {int((~costly).sum())} runs with N < 4e9 -> "
            f"{int(costly.sum())} runs at 4.2B/8.7B"] = [(m[~costly], m[costly], "loss")]
    return out


def replay_tables(args) -> tuple[list[str], dict]:
    lines, summary = [], {}
    for name, groups in tables(args.farseer, args.heldout, args.tables).items():
        t0 = time.time()
        batch = args.batch if "Farseer" not in name else max(args.batch, 12)
        res = {}  # (F, arm) -> per seed: list over groups of (pred, obs, spent, runs) or None
        for cheap, costly, lc in groups:
            cheap = cheap.reset_index(drop=True)
            unique = (lambda d: d["U"] if "U" in d else None)  # noqa: E731 - unique tokens: data-constrained
            pool = ds.pool_frame(cheap["N"], cheap["D"], unique(cheap), cost=cheap["cost"] if "cost" in cheap else None)
            target, obs = ds.Target.planned(costly["N"], costly["D"], unique(costly)), costly[lc].to_numpy(float)
            loss = cheap[lc].to_numpy(float)
            for F in (*args.fractions, 1.0):
                for arm, runs in designs(pool, loss, target, F, n_boot=args.n_boot, seeds=args.seeds, batch=batch,
                                         variants=args.variants, families=args.families).items():
                    for s, (fit, spent, n) in enumerate(runs):
                        cell = res.setdefault((F, arm), [[] for _ in runs])
                        cell[s].append(None if fit is None else (target.point(fit), obs, spent, n))
        arms = _arms(args)
        start = len(lines)
        lines += [f"### {name}", ""]
        lines += _fraction_table(res, arms, args.fractions, _table_cell, ("pool", "all rows"), summary, ("table", name))
        lines += ["", f"{time.time() - t0:.0f} s for this table.", ""]
        print("\n".join(lines[start:]), flush=True)
    return lines, summary


def _table_cell(per_seed: list[list]) -> tuple[str, float]:
    """per seed, per group: (pred, obs, spent, runs) or None. MAPE over all costly runs and R^2 pooled (random:
    mean over seeds, range in brackets) / compute spent / runs; a seed with a group too small to fit fails."""
    mapes, r2s, spent, runs, fails = [], [], [], [], 0
    for groups in per_seed:
        if any(g is None for g in groups):
            fails += 1
            continue
        p, o = _pooled(groups)
        mapes.append(_mape(p, o))
        r2s.append(float(1 - np.sum((p - o) ** 2) / np.sum((o - o.mean()) ** 2)))
        spent.append(np.mean([g[2] for g in groups]))
        runs.append(sum(g[3] for g in groups))
    if not mapes:
        return f"n/a ({fails} too small to fit)", np.nan
    rng = lambda v, f: f" ({f.format(min(v))} to {f.format(max(v))})" if len(v) > 1 else ""  # noqa: E731
    fail = f" / {fails} of {len(per_seed)} too small" if fails else ""
    return (f"{np.mean(mapes):.2f}%{rng(mapes, '{:.2f}')} / R² {np.mean(r2s):.3f}{rng(r2s, '{:.2f}')} / "
            f"{np.mean(spent):.1%} in {np.mean(runs):.0f}{fail}"), float(np.mean(mapes))


# ------------------------------------------------------------------------------------------------------------
def _variant(text: str) -> Variant:
    """'[gamma[:tau[:sigma[:ell]]]][/scoring[=ratio:length[:draws]]][@rho][^at_bound]' as a Variant, the missing ones
    at design's defaults (ratio and length: the bias scoring's discrepancy, design.BIAS_RATIO and BIAS_LENGTH by
    default; at_bound: design.at_bound_of's default for the scoring)."""
    text, _, bound = text.partition("^")
    if bound and bound not in ds.AT_BOUNDS:
        raise SystemExit(f"--variants: after ^ give one of {list(ds.AT_BOUNDS)}; got {bound!r}")
    text, _, rho = text.partition("@")
    text, _, scoring = text.partition("/")
    if (scoring or ds.SCORING).partition("=")[0] not in ds.SCORINGS:
        raise SystemExit(f"--variants: scoring must be one of {ds.SCORINGS}; got {scoring!r}")
    parts = [float(x) for x in text.split(":") if x]
    defaults = (ds.COST_EXPONENT, ds.SCALE_DISCOUNT, ds.SHARED_DISCREPANCY, ds.DISCREPANCY_LENGTH)
    return Variant(*(float(x) for x in (*parts, *defaults[len(parts):])), scoring or ds.SCORING,
                   float(rho) if rho else ds.ANCHOR_SHARE, bound or None)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=("sim", "tables", "all"), default="all")
    ap.add_argument("--n-boot", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3, help="random orders per cell")
    ap.add_argument("--studies", type=int, default=1, help="simulator studies per kind and scenario")
    ap.add_argument("--kinds", default=",".join(DEFAULT_SIM_KINDS), help=f"of {', '.join(SIM_KINDS)}")
    ap.add_argument("--first-study", type=int, default=0,
                    help="index of the first simulator study (the reported runs use 0, 1, ...; held-out checks later ones)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--variants", default=None,
                    help="adaptive arms, comma-separated, each "
                         "gamma[:tau[:sigma:ell]][/scoring[=ratio:length[:draws]]][@rho][^at_bound] "
                         "(cost exponent, scale discount, shared discrepancy sd and length, scoring bias|delta|"
                         "bootstrap with the bias scoring's discrepancy, anchor share, none|bootstrap|spread where "
                         "the fit is at a bound); default: design's")
    ap.add_argument("--families", default="", help="law families whose draws join the selector's (e.g. gadre,kaplan)")
    ap.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    ap.add_argument("--farseer", action="store_true", help="also replay the Farseer grid (366 pool runs; slow)")
    ap.add_argument("--tables", default="gadre,olmo,porian", help="which public tables to replay")
    ap.add_argument("--heldout", action="store_true",
                    help="replay the tables' held-out loss columns (choosing defaults) instead of the reported ones")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "design.md")
    a = ap.parse_args(argv)
    a.kinds = tuple(k for k in a.kinds.split(",") if k)
    a.variants = tuple(_variant(v) for v in (a.variants or "").split(",") if v) or (_variant(""),)
    a.tables = tuple(t for t in a.tables.split(",") if t)
    a.families = tuple(f for f in a.families.split(",") if f) or None
    a.fractions = tuple(float(f) for f in a.fractions.split(","))
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    t0 = time.time()
    cmd = " ".join(sys.argv[1:])
    lines = ["# Adaptive designs against the full grid, random and cheapest-first at equal compute", "",
             f"`benchmarks/bench_design.py {cmd}` (n_boot {args.n_boot}, {args.seeds} random orders per cell, batch "
             f"{args.batch}, adaptive arms (cost exponent gamma, scale discount tau, ...) "
             f"{', '.join(v.name.removeprefix('adaptive ') for v in args.variants)}"
             + (f", families {'+'.join(args.families)}" if args.families else "")
             + "). Method: the script's docstring.",
             ""]
    if args.arm in ("sim", "all"):
        sl, _ = sim(args)
        lines += ["## (a) Simulator: N_opt at 10x the grid's largest budget, against the true surface's", "",
                  "Each cell: mean |N_opt / truth - 1| over the studies (random: mean over orders, the orders' "
                  "range in brackets) / median 95% interval width relative to the truth / compute spent as a share "
                  "of the grid's / runs used.", "", *sl]
    if args.arm in ("tables", "all"):
        tl, _ = replay_tables(args)
        lines += ["## (b) Replays on public tables: the costly runs' loss", "",
                  "Each cell: MAPE over the costly runs (random: mean over orders, range in brackets) / R² over them "
                  "/ compute spent as a share of the pool's / runs used (summed over a table's groups).", "", *tl]
    lines.append(f"Wall time {time.time() - t0:.0f} s on {processor().describe()}, one process, nice {os.nice(0)}, "
                 "on a "
                 f"{os.cpu_count()}-core machine shared with other jobs.")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
