"""Coverage of the fits' 95% intervals on synthetic studies with a known truth (issue 25, item 2).

    .venv/bin/python benchmarks/bench_coverage.py                  # the product's methods, 30 studies per cell
    .venv/bin/python benchmarks/bench_coverage.py --quick          # 1 study per cell, n_boot 20 (CI, < 60 s)
    .venv/bin/python benchmarks/bench_coverage.py --methods all    # also the prototype intervals (slower)
    .venv/bin/python benchmarks/bench_coverage.py --methods A3,A3-jack --studies 100 --kinds isoflop-demo
    .venv/bin/python benchmarks/bench_coverage.py --from-csv a.csv,b.csv --out x.md   # score earlier --csv rows

Cost on 2 cores of an AMD EPYC (n_boot 200, the product as of December 2026): per study, Approach 2 ~1 s,
Approach 3 3-6 s, the data-constrained law 10-20 s (with R*_N); the default 30 studies per cell take about
15 minutes idle, 100 per cell about 50 (studies seeded by index: `--start 30 --studies 70` extends a run).

Studies (`STUDIES`; each seeded, drawn afresh per replicate):

- `isoflop-demo`: like the demo's decoder sweep: 7 budgets over two decades (1, 2, 5, 10, 20, 50, 100 x 1e18
  FLOPs), sizes from one geometric ladder (ratio 1.5-1.8 per study) kept within a window around a guess of the
  optimum (4 to 6 sizes per budget), the guess off the true optimum by up to x1.4 for the whole study and
  x1.1 per budget.
- `isoflop-chinchilla`: 9 budgets over 2.7 decades (6e18 to 3e21), 9 sizes per budget spanning x4 to x6 on
  each side of a guess off the optimum by up to x1.35.
- `data-constrained`: a ladder of 5 sizes x 4 token budgets (spanning x16 and x10, around the compute-optimal
  ratio) x 3 unique-token sets U = D_max, D_max/8, D_max/32: 60 runs, 28 of them repeating their data, up to
  32 epochs.

Scenarios (`SCENARIOS`):

- `law`: losses from the fitted form itself (L(N, D) for Approaches 2 and 3; the data-constrained law with
  R*_D for the third study), parameters drawn per study (alpha in [0.28, 0.40], beta in [0.24, 0.34], E in
  [1.5, 2.0], R*_D in [5, 30]), times run-to-run noise exp(eps), eps ~ Normal(0, sigma), sigma drawn per
  study uniformly in [0.5%, 1.5%] (log-normal multiplicative noise, as analysis/synthetic.py draws it).
- `misspecified`: the same noise on a surface of another form, at random per study one of
  (i) Farseer-like: the data term's exponent varies smoothly with N,
      L = E + A N^-alpha + B D^-beta(N),  beta(N) = beta + kappa ln(N/N_ref),  written about (N_ref, D_ref)
      so that it is B D^-beta exp(-kappa ln(N/N_ref) ln(D/D_ref)),  |kappa| in [0.005, 0.012];
  (ii) curved powers: each term's log-log slope drifts,
      L = E + A N^-alpha exp(c_N ln^2(N/N_ref)) + B D^-beta exp(c_D ln^2(D/D_ref)),  |c| in [0.004, 0.010].
  For the data-constrained study the repeated tokens also lose value by another law than Muennighoff's
  exponential: D' = U (1 + R (1 + R / (p R_0))^-p) ... saturating like 1 - (1 + R/(p R_0))^-p, p in [0.7, 1.5].
  The loss deviates from the nearest Chinchilla-form surface by a few % over each grid (printed per cell).

Truth: N_opt(C) is the minimum of the TRUE loss along 6ND = C (numeric, bounded scalar minimisation in log N;
for the capped quantity, of L(N, C/6N, U)); `a` is the least-squares slope of log N_opt(C) on log C over the
study's own budget range (25 log-spaced C); alpha, beta and R*_D are scored only in the `law` scenario, where
the generating form has them. Targets: `N_opt@in` at the geometric middle of the study's budgets, `N_opt@10x`
at 10x its largest budget, and (data-constrained) `N_opt(U)@10x` at 10x with only U = D_max/8 unique tokens.

Methods (`METHODS`): name -> callable(table) -> {quantity: (value, low, high)} or None when the table is not
one the method fits (a data-constrained table for Approach 2...). `table.attrs` holds the targets, n_boot,
level and a seed. The product's methods use the public API only; the prototype intervals (names with a
suffix) wrap the product's classes and reuse their fitting internals, as a sketch of a fix for analysis/.

Output: per study x scenario x method x quantity: nominal level, coverage with its Monte-Carlo standard error,
misses below / above, the median relative width (high - low) / truth, and the median signed error of the point
estimate (value - truth for exponents; the median ratio - 1 for N_opt and R*_D). Printed as markdown and written
to benchmarks/results/coverage-<processor kind>.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # two worker processes on two cores: no BLAS threads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medscale.analysis import DataConstrainedFit, IsoFlopFit, ParametricFit, compute_optimal  # noqa: E402
from medscale.analysis.bootstrap import interval, parallel_map  # noqa: E402
from medscale.analysis.errors import AnalysisError  # noqa: E402

LEVEL = 0.95
EXPONENTS = ("a", "alpha", "beta")  # scored on the absolute scale; the rest (N_opt, R*_D) as ratios


# ------------------------------------------------------------------------------------------------------------
# True loss surfaces
# ------------------------------------------------------------------------------------------------------------
class Surface:
    """A true loss L(N, D, U) (U = unique tokens; inf = every token new) and the parameters it has, if any."""

    def __init__(self, law: dict, *, form: str = "law", n_ref: float = 1.0, d_ref: float = 1.0,
                 kappa: float = 0.0, c_n: float = 0.0, c_d: float = 0.0, repeat: str = "exp", p: float = 1.0):
        self.law, self.form, self.n_ref, self.d_ref = dict(law), form, n_ref, d_ref
        self.kappa, self.c_n, self.c_d, self.repeat, self.p = kappa, c_n, c_d, repeat, p

    def effective(self, D, U):
        D, U = np.asarray(D, float), np.asarray(U, float)
        r0 = self.law.get("R_star_D")
        if r0 is None:
            return D * np.ones_like(U)
        with np.errstate(invalid="ignore", divide="ignore"):
            R = np.maximum(D / U - 1.0, 0.0)
            if self.repeat == "exp":  # Muennighoff et al. 2023
                gain = r0 * -np.expm1(-R / r0)
            else:  # value of the repeats saturating as a power, same ceiling U (1 + R0)
                gain = r0 * (1.0 - (1.0 + R / (self.p * r0)) ** -self.p)
            out = np.minimum(D, U) + U * gain
        return np.where(np.isinf(U), D, out)

    def __call__(self, N, D, U=np.inf):
        p = self.law
        N = np.asarray(N, float)
        Dp = self.effective(D, U)
        ln, ld = np.log(N / self.n_ref), np.log(Dp / self.d_ref)
        n_term = p["A"] * N ** -p["alpha"]
        d_term = p["B"] * Dp ** -p["beta"]
        if self.form == "farseer":
            d_term = d_term * np.exp(-self.kappa * ln * ld)
        elif self.form == "curved":
            n_term = n_term * np.exp(self.c_n * ln * ln)
            d_term = d_term * np.exp(self.c_d * ld * ld)
        return p["E"] + n_term + d_term

    def known(self) -> dict:
        """Parameters scored against the fits: only where the generating form is the fitted one."""
        if self.form != "law" or self.repeat != "exp":
            return {}
        out = {"alpha": self.law["alpha"], "beta": self.law["beta"]}
        if "R_star_D" in self.law:
            out["R_star_D"] = self.law["R_star_D"]
        return out


def true_n_opt(surface: Surface, C: float, U: float = np.inf) -> float:
    """argmin_N L(N, C / 6N, U): a log grid over x1000 either side of the base law's optimum (far outside it a
    misspecified surface means nothing), then a bounded scalar minimisation."""
    p = surface.law
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    x0 = np.log(g) + p["beta"] / (p["alpha"] + p["beta"]) * np.log(C / 6)
    x = np.linspace(x0 - 6.9, x0 + 6.9, 1381)
    f = lambda v: surface(np.exp(v), C / (6 * np.exp(v)), U)  # noqa: E731
    i = int(np.argmin(f(x)))
    lo, hi = x[max(i - 1, 0)], x[min(i + 1, x.size - 1)]
    res = minimize_scalar(lambda v: float(f(v)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return float(np.exp(res.x))


def true_a(surface: Surface, c_lo: float, c_hi: float) -> float:
    Cs = np.geomspace(c_lo, c_hi, 25)
    n = np.array([true_n_opt(surface, C) for C in Cs])
    return float(np.polyfit(np.log(Cs), np.log(n), 1)[0])


# ------------------------------------------------------------------------------------------------------------
# Studies
# ------------------------------------------------------------------------------------------------------------
def _draw_law(rng: np.random.Generator, data: bool) -> dict:
    law = {"E": rng.uniform(1.5, 2.0), "A": 400.0, "B": 410.0,
           "alpha": rng.uniform(0.28, 0.40), "beta": rng.uniform(0.24, 0.34)}
    if data:
        law["R_star_D"] = rng.uniform(5.0, 30.0)
    return law


def _surface(rng, scenario: str, data: bool, n_ref: float, d_ref: float) -> Surface:
    law = _draw_law(rng, data)
    if scenario == "law":
        return Surface(law)
    form = "farseer" if rng.random() < 0.5 else "curved"
    sign = lambda: rng.choice([-1.0, 1.0])  # noqa: E731
    kw = dict(form=form, n_ref=n_ref, d_ref=d_ref)
    if form == "farseer":
        kw["kappa"] = sign() * rng.uniform(0.005, 0.012)
    else:
        kw["c_n"], kw["c_d"] = sign() * rng.uniform(0.004, 0.010), sign() * rng.uniform(0.004, 0.010)
    if data:
        kw["repeat"], kw["p"] = "power", rng.uniform(0.7, 1.5)
    return Surface(law, **kw)


def _frame(N, D, U, C, L) -> pd.DataFrame:
    df = pd.DataFrame({"params": N, "tokens": D, "compute": 6 * N * D, "budget": C, "loss": L})
    if U is not None:
        df["unique_tokens"] = U
        df["epochs"] = D / U
    return df


def _centred(surface: Surface, C: float) -> Surface:
    """Put the surface's reference point (where misspecification vanishes) at the optimum of its base law at C."""
    n = true_n_opt(Surface({k: v for k, v in surface.law.items() if k != "R_star_D"}), C)
    surface.n_ref, surface.d_ref = n, C / (6 * n)
    return surface


def _isoflop_grid(rng, surface, budgets, pick_sizes) -> pd.DataFrame:
    """Budgets x sizes chosen by `pick_sizes(rng, C, guess)` around a guess of each budget's optimum."""
    miss = np.exp(rng.uniform(-np.log(1.4), np.log(1.4)))
    rows = []
    for C in budgets:
        guess = true_n_opt(surface, C) * miss * np.exp(rng.normal(0, 0.1))
        for N in pick_sizes(rng, C, guess):
            rows.append((N, C / (6 * N), C))
    N, D, C = map(np.array, zip(*rows))
    return _frame(N, D, None, C, surface(N, D))


def _demo_sizes(ratio, phase):
    def pick(rng, C, guess):
        k = np.arange(-40, 41)
        ladder = 1e3 * ratio ** (k + phase)
        dist = np.abs(np.log(ladder / guess))
        n = int(rng.integers(4, 7))  # 4 to 6 sizes, as the demo's tokens-per-parameter window keeps
        return np.sort(ladder[np.argsort(dist)[:n]])
    return pick


def _chinchilla_sizes(span):
    def pick(rng, C, guess):
        return np.geomspace(guess / span, guess * span, 9)
    return pick


def study(kind: str, scenario: str, seed: int, *, n_boot: int = 200, level: float = LEVEL) -> dict:
    """One seeded study: its table (targets in table.attrs) and the truth of every quantity."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.005, 0.015)
    data = kind == "data-constrained"
    if kind == "isoflop-demo":
        budgets = 1e18 * np.array([1, 2, 5, 10, 20, 50, 100], float)
        sizes = _demo_sizes(rng.uniform(1.5, 1.8), rng.uniform(0, 1))
    elif kind == "isoflop-chinchilla":
        budgets = np.geomspace(6e18, 3e21, 9)
        sizes = _chinchilla_sizes(rng.uniform(4.0, 6.0))
    elif data:
        budgets = None
    else:
        raise ValueError(kind)
    if not data:
        surface = _centred(_surface(rng, scenario, False, 1.0, 1.0), float(np.sqrt(budgets[0] * budgets[-1])))
        df = _isoflop_grid(rng, surface, budgets, sizes)
        c_lo, c_hi = budgets.min(), budgets.max()
        extra = {}
    else:
        # a ladder around the compute-optimal ratio of a 3e19 FLOP run: sizes x16, tokens x10
        surface = _centred(_surface(rng, scenario, True, 1.0, 1.0), 3e19)
        n_c, d_c = surface.n_ref, surface.d_ref
        sizes = n_c * np.geomspace(1 / 4, 4, 5) * np.exp(rng.normal(0, 0.1))
        tokens = d_c * np.geomspace(1 / 3, 10 / 3, 4) * np.exp(rng.normal(0, 0.1))
        uniques = tokens.max() / np.array([1.0, 8.0, 32.0])
        N, D, U = (a.ravel() for a in np.meshgrid(sizes, tokens, uniques, indexing="ij"))
        C = 6 * N * D
        df = _frame(N, D, U, np.nan, surface(N, D, U))
        c_lo, c_hi = C.min(), C.max()
        extra = {"N_opt(U)@10x": (10 * c_hi, uniques[1])}
    df["loss"] = df["loss"] * np.exp(rng.normal(0, sigma, len(df)))
    targets = {"N_opt@in": (float(np.sqrt(c_lo * c_hi)), np.inf), "N_opt@10x": (10 * float(c_hi), np.inf), **extra}
    truth = {"a": true_a(surface, c_lo, c_hi), **surface.known()}
    for q, (C, U) in targets.items():
        truth[q] = true_n_opt(surface, C, U)
    df.attrs.update(targets=targets, n_boot=n_boot, level=level, seed=int(seed) % (2**31), c_range=(c_lo, c_hi))
    return {"kind": kind, "scenario": scenario, "seed": seed, "sigma": sigma, "form": surface.form,
            "table": df, "truth": truth, "surface": surface}


STUDIES = ("isoflop-demo", "isoflop-chinchilla", "data-constrained")
SCENARIOS = ("law", "misspecified")


# ------------------------------------------------------------------------------------------------------------
# Methods: the product's intervals
# ------------------------------------------------------------------------------------------------------------
def _est(e) -> tuple[float, float, float]:
    return float(e.value), float(e.low), float(e.high)


def _isoflop(table) -> bool:
    return "unique_tokens" not in table and table["budget"].notna().all()


def _n_opt_targets(fit, table, out: dict) -> dict:
    for q, (C, U) in table.attrs["targets"].items():
        al = compute_optimal(fit, C) if np.isinf(U) else compute_optimal(fit, C, max_tokens=U)
        out[q] = _est(al.n_opt)
    return out


def _isoflop_fit(table, **kw) -> IsoFlopFit:
    if "profile" in kw and "profile" not in inspect.signature(IsoFlopFit).parameters:
        kw.pop("profile")
    a = table.attrs
    return IsoFlopFit(n_boot=a["n_boot"], level=a["level"], seed=a["seed"], **kw).fit(
        table["params"], table["compute"], table["loss"], budget=table["budget"])


_PROFILE = inspect.signature(IsoFlopFit).parameters.get("profile")
DEFAULT_PROFILE = _PROFILE.default if _PROFILE is not None else "parabola"


def approach2(table, **kw):
    if not _isoflop(table):
        return None
    fit = _cached(("A2", kw.get("profile", DEFAULT_PROFILE)), lambda: _isoflop_fit(table, **kw))
    out = {"a": _est(fit.estimates_["a"])}
    prof = getattr(fit, "profiles_", None)
    if prof is not None and getattr(fit, "profile", "curve") == "curve" and len(getattr(fit, "exponent_draws_", [])):
        lo, hi = interval(fit.exponent_draws_, fit.level)
        out["alpha"] = (prof.alpha, float(lo[0]), float(hi[0]))
        out["beta"] = (prof.beta, float(lo[1]), float(hi[1]))
    return _n_opt_targets(fit, table, out)


def _parametric_fit(table, **kw) -> ParametricFit:
    a = table.attrs
    return ParametricFit(n_boot=a["n_boot"], level=a["level"], seed=a["seed"], n_jobs=1, **kw).fit(
        table["params"], table["tokens"], table["loss"], budget=table["budget"])


def approach3(table, **kw):
    if not _isoflop(table):
        return None
    if kw and not set(kw) <= set(inspect.signature(ParametricFit).parameters):
        return None  # an option this version of the product does not have
    fit = _cached(("A3",) + tuple(sorted(kw.items())) if kw else "A3", lambda: _parametric_fit(table, **kw))
    out = {k: _est(fit.estimates_[k]) for k in ("a", "alpha", "beta")}
    return _n_opt_targets(fit, table, out)


def _dc_fit(table, **kw) -> DataConstrainedFit:
    a = table.attrs
    return DataConstrainedFit(n_boot=a["n_boot"], level=a["level"], seed=a["seed"], n_jobs=1, **kw).fit(
        table["params"], table["tokens"], table["unique_tokens"], table["loss"])


def data_constrained(table, **kw):
    if "unique_tokens" not in table:
        return None
    if kw and not set(kw) <= set(inspect.signature(DataConstrainedFit).parameters):
        return None  # an option this version of the product does not have
    fit = _cached(("DC",) + tuple(sorted(kw.items())) if kw else "DC", lambda: _dc_fit(table, **kw))
    out = {k: _est(fit.estimates_[k]) for k in ("a", "alpha", "beta", "R_star_D")}
    return _n_opt_targets(fit, table, out)


# ------------------------------------------------------------------------------------------------------------
# Prototype intervals (wrap the product's classes; the fix would move into analysis/)
# ------------------------------------------------------------------------------------------------------------
_CACHE: dict = {}  # fits shared by the methods of one study (cleared per study by run_study)


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _z(level):
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _log_q(q: str) -> bool:
    return q not in EXPONENTS


def _t_interval(value: float, se: float, df: int, level: float, log: bool) -> tuple[float, float, float]:
    h = float(student_t.ppf(0.5 + level / 2, df)) * se
    if log:
        return value, float(np.exp(np.log(value) - h)), float(np.exp(np.log(value) + h))
    return value, value - h, value + h


def _percentile(value: float, draws: np.ndarray, level: float) -> tuple[float, float, float]:
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if d.size < 10:
        return value, np.nan, np.nan
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return value, float(lo), float(hi)


# -- Approach 2: the law across budgets as a (meta-)regression of the budgets' minima ---------------------------
def _meta(x, c, v, *, tau: bool):
    """WLS line x = b0 + b1 (c - cbar) with weights 1/(v + tau^2) (tau^2 by DerSimonian-Laird when `tau`), and
    its Knapp-Hartung covariance q (X'WX)^-1, q = sum w r^2 / (G - 2): the scatter of the minima about the line
    (noise and lack of fit alike) sets the interval, not the within-budget bootstrap. Returns (b, cov, cbar, df)."""
    G = x.size
    cbar = float(np.average(c, weights=1 / v))
    X = np.column_stack([np.ones(G), c - cbar])

    def wls(w):
        M = X.T @ (w[:, None] * X)
        b = np.linalg.solve(M, X.T @ (w * x))
        return b, M

    w = 1 / v
    b, M = wls(w)
    t2 = 0.0
    if tau:
        r = x - X @ b
        Q = float(np.sum(w * r * r))
        tr = float(w.sum() - np.trace(np.linalg.solve(M, X.T @ ((w * w)[:, None] * X))))
        t2 = max(0.0, (Q - (G - 2)) / tr) if tr > 0 else 0.0
        w = 1 / (v + t2)
        b, M = wls(w)
    r = x - X @ b
    q = float(np.sum(w * r * r)) / (G - 2)
    return b, q * np.linalg.inv(M), cbar, G - 2


def _a2_meta(fit, table, *, tau: bool, weights: str) -> dict:
    m = fit.minima_[fit.minima_["in_law"]]
    if len(m) < 3:
        return {}
    x, c = np.log(m["n_opt"].to_numpy()), np.log(m["budget"].to_numpy())
    if weights == "product":  # the product's inverse bootstrap variances: its own point estimate
        v = 1 / m["weight"].to_numpy()
    elif weights == "equal":  # ordinary least squares
        v = np.ones(len(m))
    else:  # each budget's own variance of log N_opt, from its bootstrap interval
        v = ((np.log(m["n_opt_high"]) - np.log(m["n_opt_low"])) / (2 * _z(fit.level))).to_numpy() ** 2
        v = np.where(np.isfinite(v) & (v > 0), v, np.nanmax(v[np.isfinite(v)]) if np.isfinite(v).any() else 1.0)
    b, cov, cbar, df = _meta(x, c, v, tau=tau)
    lv = table.attrs["level"]
    out = {"a": _t_interval(b[1], float(np.sqrt(cov[1, 1])), df, lv, False)}
    for q, (C, U) in table.attrs["targets"].items():
        if np.isinf(U):
            g = np.array([1.0, np.log(C) - cbar])
            out[q] = _t_interval(float(np.exp(g @ b)), float(np.sqrt(g @ cov @ g)), df, lv, True)
    return out


def _a2_product(table, profile):
    return _cached(("A2", profile), lambda: _isoflop_fit(table, profile=profile))


def a2_meta(table, *, profile: str = DEFAULT_PROFILE, tau: bool = False, weights: str = "product"):
    if not _isoflop(table):
        return None
    fit = _a2_product(table, profile)
    return _a2_meta(fit, table, tau=tau, weights=weights)


def a2_ols_hull(table):
    """The hull of the OLS t intervals through the parabola's minima and through the curve's: the t interval
    replaces the within-budget bootstrap, the hull covers the choice of profile shape (the parabola is biased
    when the IsoFLOP curve is asymmetric, the curve is noisy with few sizes). Point: the parabola's."""
    if not _isoflop(table):
        return None
    par = _a2_meta(_a2_product(table, "parabola"), table, tau=False, weights="equal")
    if "profile" not in inspect.signature(IsoFlopFit).parameters:
        return par
    try:
        cur = _a2_meta(_a2_product(table, "curve"), table, tau=False, weights="equal")
    except AnalysisError:
        return par
    return {q: (v, float(np.fmin(lo, cur[q][1])), float(np.fmax(hi, cur[q][2]))) if q in cur else (v, lo, hi)
            for q, (v, lo, hi) in par.items()}


def a2_quadratic(table, *, profile: str = DEFAULT_PROFILE):
    """`a` as in the OLS line; N_opt from an OLS quadratic in log C through the minima (t with G - 3 degrees of
    freedom): allows the allocation exponent to drift with C, which is what extrapolating a line cannot."""
    if not _isoflop(table):
        return None
    fit = _a2_product(table, profile)
    out = _a2_meta(fit, table, tau=False, weights="equal")
    m = fit.minima_[fit.minima_["in_law"]]
    G = len(m)
    if G < 4:
        return {k: v for k, v in out.items() if k == "a"}
    x, c = np.log(m["n_opt"].to_numpy()), np.log(m["budget"].to_numpy())
    cbar = c.mean()
    X = np.column_stack([np.ones(G), c - cbar, (c - cbar) ** 2])
    b, *_ = np.linalg.lstsq(X, x, rcond=None)
    r = x - X @ b
    cov = float(r @ r) / (G - 3) * np.linalg.inv(X.T @ X)
    for q, (C, U) in table.attrs["targets"].items():
        if np.isinf(U):
            d = np.log(C) - cbar
            g = np.array([1.0, d, d * d])
            out[q] = _t_interval(float(np.exp(g @ b)), float(np.sqrt(g @ cov @ g)), G - 3, table.attrs["level"], True)
    return out


def a2_pooled(table):
    """Parabolas re-drawn from a parametric bootstrap: every size kept, noise exp(s z) with s the residual
    standard deviation pooled over budgets (sum r^2 / sum (n_k - 3)), the product's weights for the law."""
    if not _isoflop(table):
        return None
    fit = _a2_product(table, "parabola")
    d = fit.data_
    m = fit.minima_.set_index("budget")
    rng = np.random.default_rng(table.attrs["seed"] + 7)
    B, lv = table.attrs["n_boot"], table.attrs["level"]
    budgets = [C for C in m.index if m.loc[C, "in_law"]]
    groups = {C: d[np.isclose(d["budget"], C)] for C in m.index}
    res, dof = [], 0
    fitted = {}
    for C, g in groups.items():
        u = np.log(g["params"].to_numpy())
        ubar = u.mean()
        coef = np.polyfit(u - ubar, g["loss"].to_numpy(), 2)
        yhat = np.polyval(coef, u - ubar)
        fitted[C] = (u - ubar, yhat)
        res.append(np.log(g["loss"].to_numpy() / yhat))
        dof += len(g) - 3
    s = float(np.sqrt(np.sum(np.concatenate(res) ** 2) / max(dof, 1)))
    xs = np.full((B, len(budgets)), np.nan)
    for j, C in enumerate(budgets):
        u, yhat = fitted[C]
        ys = yhat[None] * np.exp(s * rng.standard_normal((B, u.size)))
        V = np.column_stack([u * u, u, np.ones_like(u)])
        coef = np.linalg.lstsq(V, ys.T, rcond=None)[0]  # (3, B)
        p2, p1 = coef[0], coef[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            xs[:, j] = np.where(p2 > 0, -p1 / (2 * p2), np.nan) + np.log(groups[C]["params"]).mean()
    w = m.loc[budgets, "weight"].to_numpy()
    lc = np.log(np.array(budgets))
    draws = np.full((B, 2), np.nan)
    for i in range(B):
        ok = np.isfinite(xs[i])
        if ok.sum() >= 2:
            draws[i] = np.polyfit(lc[ok], xs[i, ok], 1, w=np.sqrt(w[ok]))
    out = {"a": _percentile(float(fit.estimates_["a"].value), draws[:, 0], lv)}
    for q, (C, U) in table.attrs["targets"].items():
        if np.isinf(U):
            out[q] = _percentile(float(fit.n_opt(C)), np.exp(draws[:, 1] + draws[:, 0] * np.log(C)), lv)
    return out


# -- Approach 3 and the data-constrained law: other resampling schemes around the product's point fit ----------
class _Refitter:
    """The product's point fit (n_boot=0) and a cheap refit from its basins with weights or new log losses."""

    def __init__(self, table, family: str):
        a = table.attrs
        self.table, self.family = table, family
        if family == "A3":
            from medscale.analysis import parametric
            from medscale.analysis.power_sum import refit

            # the product's own fit when its method ran on this study (same point estimate and basins)
            self.fit = _CACHE.get("A3") or ParametricFit(n_boot=0, level=a["level"], seed=a["seed"]).fit(
                table["params"], table["tokens"], table["loss"], budget=table["budget"])
            d = self.fit.data_
            self.logx = np.vstack([np.log(d["params"]), np.log(d["tokens"])])
            self.y = np.log(d["loss"].to_numpy())
            self._refit = lambda y, w: refit(self.logx, y, self.fit._starts, self.fit.delta, w)
            self._named = parametric._named
            self.theta = self.fit.theta_
            self.groups = d["budget"].to_numpy()
            self.n_params = 5
        else:
            from medscale.analysis import data_constrained as dcm
            from medscale.analysis._blas import single_threaded_blas

            self.fit = _CACHE.get("DC") or DataConstrainedFit(n_boot=0, level=a["level"], seed=a["seed"]).fit(
                table["params"], table["tokens"], table["unique_tokens"], table["loss"])
            d = self.fit.data_
            N, D, U = (d[k].to_numpy() for k in ("params", "tokens", "unique_tokens"))
            self.y = np.log(d["loss"].to_numpy())
            excess = getattr(self.fit, "excess_params", None)

            def one(y, w):
                L = np.exp(y)
                data = dcm._Data.of(N, D, U, L) if excess is None else dcm._Data.of(N, D, U, L, excess=excess)
                with single_threaded_blas():
                    return dcm._best_of(self.fit.starts_, data, w, self.fit.delta)

            self._refit = one
            self._named = (lambda t: dcm._named(t)) if excess is None else (lambda t: dcm._named(t, excess))
            self.theta = self.fit.theta_
            self.groups = (np.round(np.log(N), 6) * 1e3 + np.round(np.log(U), 6)).astype(float)  # (N, U) configs
            self.n_params = len(self.fit.params_)
        self.yhat = np.log(self._predict())

    def _predict(self):
        d = self.fit.data_
        if self.family == "A3":
            return self.fit.predict(d["params"], d["tokens"])
        return self.fit.predict(d["params"], d["tokens"], d["unique_tokens"])

    def refit(self, y=None, w=None) -> np.ndarray:
        y = self.y if y is None else y
        w = np.ones(y.size) if w is None else w
        return self._refit(y, w)

    def quantities(self, thetas: np.ndarray) -> dict[str, np.ndarray]:
        """Every scored quantity for each row of thetas, as the product computes it from its draws."""
        thetas = np.atleast_2d(thetas)
        named = self._named(thetas)
        out = {k: named[k] for k in ("a", "alpha", "beta", "R_star_D") if k in named}
        with np.errstate(all="ignore"):
            lg, a = np.log(named["G"]), named["a"]
            for q, (C, U) in self.table.attrs["targets"].items():
                if np.isinf(U):
                    out[q] = np.exp(lg + a * np.log(C / 6))
                else:
                    from medscale.analysis.data_constrained import _argmin_on_line

                    p = {k: named[k] for k in self.fit.params_}
                    ok = np.all([np.isfinite(v) for v in p.values()], axis=0)
                    res = np.full(thetas.shape[0], np.nan)
                    if ok.any():
                        n_free = float(self.fit.allocation_.n_opt(C))
                        res[ok] = _argmin_on_line({k: v[ok] for k, v in p.items()}, C, U, lambda n: 6.0 * n,
                                                  n_free / 1e4, n_free * 1e4)
                    out[q] = res
        return out

    def point(self) -> dict[str, float]:
        q = self.quantities(self.theta)
        return {k: float(v[0]) for k, v in q.items()}


def _refitter(table, family):
    return _cached(("refit", family), lambda: _Refitter(table, family))


def _family(table):
    if _isoflop(table):
        return "A3"
    if "unique_tokens" in table:
        return "DC"
    return None


def wild(table, family):
    """Wild bootstrap: y* = fitted + r sqrt(n/(n-p)) v, v = +-1 (Rademacher), refitted from the product's
    basins; percentile intervals. Keeps the design (every size, budget, epoch) and each point's own residual."""
    if _family(table) != family:
        return None
    rf = _refitter(table, family)
    n, B, lv = rf.y.size, table.attrs["n_boot"], table.attrs["level"]
    r = (rf.y - rf.yhat) * np.sqrt(n / max(n - rf.n_params, 1))
    rng = np.random.default_rng(table.attrs["seed"] + 11)
    thetas = np.array([rf.refit(y=rf.yhat + r * rng.choice([-1.0, 1.0], n)) for _ in range(B)])
    q, pt = rf.quantities(thetas), rf.point()
    return {k: _percentile(pt[k], q[k], lv) for k in q}


def cluster(table, family):
    """Cluster bootstrap: whole IsoFLOP budgets (Approach 3) or (size, unique-token) configurations (the
    data-constrained ladder) resampled with replacement; percentile intervals."""
    if _family(table) != family:
        return None
    rf = _refitter(table, family)
    B, lv = table.attrs["n_boot"], table.attrs["level"]
    labels, g = np.unique(rf.groups, return_inverse=True)
    rng = np.random.default_rng(table.attrs["seed"] + 13)
    counts = rng.multinomial(labels.size, np.full(labels.size, 1 / labels.size), size=B)
    thetas = np.array([rf.refit(w=c[g].astype(float)) for c in counts])
    q, pt = rf.quantities(thetas), rf.point()
    return {k: _percentile(pt[k], q[k], lv) for k in q}


def jackknife(table, family):
    """Delete-one-cluster jackknife (budgets / configurations as in `cluster`), t interval with G - 1 degrees of
    freedom on the log scale for N_opt and R*_D: G refits instead of n_boot."""
    if _family(table) != family:
        return None
    rf = _refitter(table, family)
    labels, g = np.unique(rf.groups, return_inverse=True)
    G, lv = labels.size, table.attrs["level"]
    thetas = np.array([rf.refit(w=(g != k).astype(float)) for k in range(G)])
    q, pt = rf.quantities(thetas), rf.point()
    out = {}
    for k, vals in q.items():
        log = _log_q(k)
        v = np.log(vals) if log else vals
        v = v[np.isfinite(v)]
        if v.size < G - 1:
            out[k] = (pt[k], np.nan, np.nan)
            continue
        se = float(np.sqrt((G - 1) / G * np.sum((v - v.mean()) ** 2)))
        out[k] = _t_interval(pt[k], se, G - 1, lv, log)
    return out


def a2_jackknife(table, profile: str = DEFAULT_PROFILE):
    """Approach 2 refitted without each budget (the curve's shared exponents refitted too), t interval with
    G - 1 df on a and on log N_opt: the between-budget scatter, including the coherent shift of every minimum
    that an error in the shared exponents causes."""
    if not _isoflop(table):
        return None
    a, fit = table.attrs, approach2(table, profile=profile) and _CACHE[("A2", profile)]
    reps = []
    for b in np.unique(table["budget"]):
        t = table[table["budget"] != b]
        try:
            f = IsoFlopFit(n_boot=0, level=a["level"], seed=a["seed"], profile=profile).fit(
                t["params"], t["compute"], t["loss"], budget=t["budget"])
            reps.append((f.allocation_.log_kn, f.allocation_.a))
        except AnalysisError:
            continue
    reps = np.array(reps)
    G = len(reps)
    out = {}
    lk, al = fit.allocation_.log_kn, fit.allocation_.a
    for q, v in (("a", al),) + tuple((q, None) for q in a["targets"]):
        if q == "a":
            vals, point, log = reps[:, 1], al, False
        else:
            C, U = a["targets"][q]
            if not np.isinf(U):
                continue
            vals, point, log = reps[:, 0] + reps[:, 1] * np.log(C), float(fit.n_opt(C)), True
        se = float(np.sqrt((G - 1) / G * np.sum((vals - vals.mean()) ** 2)))
        out[q] = _t_interval(point, se, G - 1, a["level"], log)
    return out


METHODS: dict[str, Callable] = {
    "A2": approach2,  # IsoFlopFit as shipped (its default profile)
    "A2-parabola": lambda t: approach2(t, profile="parabola"),
    "A3": approach3,
    "DC": data_constrained,
}
PRODUCT = tuple(METHODS)
METHODS.update({
    "A2-t": lambda t: a2_meta(t, profile=DEFAULT_PROFILE),
    "A2-KH": lambda t: a2_meta(t, profile=DEFAULT_PROFILE, tau=True, weights="interval"),
    "A2-parabola-t": lambda t: a2_meta(t, profile="parabola"),
    "A2-parabola-KH": lambda t: a2_meta(t, profile="parabola", tau=True, weights="interval"),
    "A2-parabola-pooled": a2_pooled,
    "A2-ols": lambda t: a2_meta(t, profile=DEFAULT_PROFILE, weights="equal"),
    "A2-parabola-ols": lambda t: a2_meta(t, profile="parabola", weights="equal"),
    "A2-ols-hull": a2_ols_hull,
    "A2-quad": lambda t: a2_quadratic(t, profile=DEFAULT_PROFILE),
    "A2-parabola-quad": lambda t: a2_quadratic(t, profile="parabola"),
    "DC-noexcess": lambda t: data_constrained(t, excess_params=False),
    "A3-bootstrap": lambda t: approach3(t, interval="bootstrap"),
    "A2-jack": a2_jackknife,
    "A2-parabola-jack": lambda t: a2_jackknife(t, profile="parabola"),
    "A3-wild": lambda t: wild(t, "A3"),
    "A3-cluster": lambda t: cluster(t, "A3"),
    "A3-jack": lambda t: jackknife(t, "A3"),
    "DC-wild": lambda t: wild(t, "DC"),
    "DC-cluster": lambda t: cluster(t, "DC"),
    "DC-jack": lambda t: jackknife(t, "DC"),
})
NOTES = {
    "A2": "IsoFlopFit() as shipped (at the digest above: the curve profile, its bootstrap draws pooled with the "
          "parabola's), percentile bootstrap of runs within each budget",
    "A2-parabola": "IsoFlopFit(profile='parabola'), the same bootstrap",
    "A3": "ParametricFit() as shipped (with budget labels: delete-one-budget jackknife, multivariate t draws with "
          "G - 1 df; percentile intervals of those draws)",
    "A2-jack": "A2's point fit; delete-one-budget jackknife of the whole fit (shared exponents refitted), t interval "
               "(G - 1 df; log scale for N_opt)",
    "A2-parabola-jack": "as A2-jack with the parabola's minima",
    "A3-bootstrap": "ParametricFit(interval='bootstrap'): percentile bootstrap of runs (the product before Dec 2026)",
    "DC": "DataConstrainedFit(), percentile bootstrap of runs",
    "A2-t": "A2's minima, WLS line with the product's weights, t interval from the residual scatter (G - 2 df)",
    "A2-KH": "A2's minima, random-effects line (DerSimonian-Laird tau^2, Knapp-Hartung t interval)",
    "A2-parabola-t": "as A2-t on the parabola's minima",
    "A2-parabola-KH": "as A2-KH on the parabola's minima",
    "A2-parabola-pooled": "parabola minima redrawn by a parametric bootstrap with the residual sd pooled over budgets",
    "A2-ols": "A2's minima, ordinary least-squares line, t interval (G - 2 df)",
    "A2-parabola-ols": "the parabola's minima, ordinary least-squares line, t interval (G - 2 df)",
    "A2-ols-hull": "hull of the OLS t intervals through the parabola's and the curve's minima (point: parabola)",
    "A2-quad": "a from A2-ols; N_opt from an OLS quadratic in log C through A2's minima, t interval (G - 3 df)",
    "A2-parabola-quad": "as A2-quad on the parabola's minima",
    "A3-wild": "A3's point fit; wild bootstrap (Rademacher, residuals x sqrt(n/(n-p))), percentile",
    "A3-cluster": "A3's point fit; whole budgets resampled, percentile",
    "A3-jack": "A3's point fit; delete-one-budget jackknife, t interval (G - 1 df; log scale for N_opt)",
    "DC-wild": "DC's point fit; wild bootstrap as A3-wild",
    "DC-noexcess": "DataConstrainedFit(excess_params=False): the law without the R*_N term, its own bootstrap",
    "DC-cluster": "DC's point fit; whole (size, unique-token) configurations resampled, percentile",
    "DC-jack": "DC's point fit; delete-one-configuration jackknife, t interval (G - 1 df; log scale for N_opt, R*_D)",
}


# ------------------------------------------------------------------------------------------------------------
# Running and scoring
# ------------------------------------------------------------------------------------------------------------
def _seed(kind: str, scenario: str, i: int, base: int) -> int:
    ss = np.random.SeedSequence([base, STUDIES.index(kind), SCENARIOS.index(scenario), i])
    return int(ss.generate_state(1)[0])


def run_study(task) -> list[dict]:
    kind, scenario, i, base, methods, n_boot = task
    s = study(kind, scenario, _seed(kind, scenario, i, base), n_boot=n_boot)
    _CACHE.clear()
    rows = []
    for name in methods:
        t = time.perf_counter()
        err = ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = METHODS[name](s["table"].copy())
        except Exception as e:  # a fit that fails counts as a miss; its error is kept in the rows
            res, err = {}, f"{type(e).__name__}: {e}"
        if res is None:
            continue
        sec = time.perf_counter() - t
        for q, truth in s["truth"].items():
            v, lo, hi = res.get(q, (np.nan, np.nan, np.nan))
            if q not in res and not err:
                continue
            rows.append({"study": kind, "scenario": scenario, "index": i, "form": s["form"], "sigma": s["sigma"],
                         "analysis": analysis_version(),
                         "method": name, "quantity": q, "truth": truth, "value": v, "low": lo, "high": hi,
                         "seconds": sec, "error": err})
    return rows


def score(df: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    out = []
    order = {q: i for i, q in enumerate(("a", "alpha", "beta", "R_star_D", "N_opt@in", "N_opt@10x", "N_opt(U)@10x"))}
    for (st, sc, m, q), g in df.groupby(["study", "scenario", "method", "quantity"], sort=False):
        ok = np.isfinite(g["low"]) & np.isfinite(g["high"])
        below = (g["truth"] < g["low"]) & ok
        above = (g["truth"] > g["high"]) & ok
        cover = ok & ~below & ~above
        n = len(g)
        p = cover.mean()
        width = ((g["high"] - g["low"]) / g["truth"].abs())[ok]
        if q in EXPONENTS:
            bias = float(np.nanmedian(g["value"] - g["truth"]))
        else:
            bias = float(np.exp(np.nanmedian(np.log(g["value"] / g["truth"]))) - 1)
        out.append({"study": st, "scenario": sc, "method": m, "quantity": q, "n": n, "nominal": level,
                    "coverage": p, "se": float(np.sqrt(p * (1 - p) / n)), "below": int(below.sum()),
                    "above": int(above.sum()), "failed": int((~ok).sum()),
                    "width": float(np.median(width)) if len(width) else np.nan, "bias": bias,
                    "sec": float(g.groupby("index")["seconds"].first().mean()),
                    "_order": order.get(q, 99)})
    res = pd.DataFrame(out)
    if res.empty:
        return res
    res["_s"] = res["study"].map({s: i for i, s in enumerate(STUDIES)})
    res["_c"] = res["scenario"].map({s: i for i, s in enumerate(SCENARIOS)})
    res["_m"] = res["method"].map({s: i for i, s in enumerate(METHODS)})
    return res.sort_values(["_s", "_c", "_m", "_order"]).drop(columns=["_s", "_c", "_m", "_order"]).reset_index(
        drop=True)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| study | scenario | method | quantity | n | nominal | coverage | miss low / high | failed "
             "| median width | median error | s / fit |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.to_dict(orient="records"):
        flag = "" if 0.90 <= r["coverage"] <= 0.98 else " **!**"
        bias = (f"{r['bias']:+.3f}" if r["quantity"] in EXPONENTS else f"{100 * r['bias']:+.1f}%")
        lines.append(f"| {r['study']} | {r['scenario']} | {r['method']} | {r['quantity']} | {r['n']} | "
                     f"{r['nominal']:.0%} | {r['coverage']:.1%} +- {r['se']:.1%}{flag} | {r['below']} / "
                     f"{r['above']} | {r['failed']} | {100 * r['width']:.0f}% | {bias} | {r['sec']:.2f} |")
    return "\n".join(lines)


def misfit(kind: str, scenario: str, base: int, n: int = 5) -> float:
    """Median over a few noise-free studies of the RMS log-residual of Approach 3 (or the data-constrained law)
    refitted without bootstrap: how far the surface is from the nearest fitted-form surface over the grid."""
    vals = []
    for i in range(n):
        s = study(kind, scenario, _seed(kind, scenario, 10_000 + i, base), n_boot=0)
        t = s["table"]
        t["loss"] = s["surface"](t["params"], t["tokens"], t.get("unique_tokens", np.inf))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if "unique_tokens" in t:
                    f = DataConstrainedFit(n_boot=0).fit(t["params"], t["tokens"], t["unique_tokens"], t["loss"])
                else:
                    f = ParametricFit(n_boot=0).fit(t["params"], t["tokens"], t["loss"])
                vals.append(float(np.sqrt(np.mean(f.residuals()["residual"] ** 2))))
        except Exception:  # noqa: BLE001 - a fit that fails here is reported by the coverage rows
            pass
    return float(np.median(vals)) if vals else float("nan")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=30, help="studies per study kind x scenario (default 30)")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--methods", default="product", help="comma list, 'product' (default) or 'all'")
    p.add_argument("--kinds", default=",".join(STUDIES))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first study (to extend an earlier run)")
    p.add_argument("--quick", action="store_true", help="1 study per cell, n_boot 20: a smoke test (< 60 s)")
    p.add_argument("--out", default=None, help="results markdown (default benchmarks/results/coverage-<cpu>.md)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--csv", default=None, help="also write every (study, method, quantity) row here")
    p.add_argument("--from-csv", default=None, help="score rows written earlier by --csv (comma list) instead; "
                   "--kinds, --scenarios and --methods (when given) filter them")
    return p.parse_args(argv)


def _methods(spec: str) -> list[str]:
    methods = {"product": list(PRODUCT), "all": list(METHODS)}.get(spec, spec.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    return methods


def collect(args) -> tuple[pd.DataFrame, float]:
    """Every (study, method, quantity) row: truth, value, interval, seconds; and the wall time."""
    methods = _methods(args.methods)
    kinds, scenarios = args.kinds.split(","), args.scenarios.split(",")
    tasks = [(k, s, i, args.seed, methods, args.n_boot) for i in range(args.start, args.start + args.studies)
             for k in kinds for s in scenarios]
    # the costliest studies first, so the two processes finish together
    tasks.sort(key=lambda t: t[0] != "data-constrained")
    t0 = time.time()
    rows = []
    step = max(10 * args.jobs, len(tasks) // 10)
    for k in range(0, len(tasks), step):  # in blocks, to say how far it got
        rows += [r for chunk in parallel_map(run_study, tasks[k:k + step], args.jobs) for r in chunk]
        if not args.quick:
            print(f"{min(k + step, len(tasks))}/{len(tasks)} studies, {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return pd.DataFrame(rows), time.time() - t0


@functools.cache
def analysis_version() -> str:
    """A digest of analysis/*.py: the product code this table measured (it changes between commits)."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted((ROOT / "analysis").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


def run(argv=None) -> tuple[pd.DataFrame, str]:
    args = parse_args(argv)
    if args.quick:
        args.studies, args.n_boot = min(args.studies, 1), min(args.n_boot, 20)
    if args.from_csv:
        df = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=["", "nan", "NaN"])
                        for f in args.from_csv.split(",")], ignore_index=True)
        df = df.drop_duplicates(["study", "scenario", "index", "method", "quantity"], keep="last")
        df = df[df["study"].isin(args.kinds.split(",")) & df["scenario"].isin(args.scenarios.split(","))]
        if args.methods != "product":  # the default keeps every method in the files
            df = df[df["method"].isin(_methods(args.methods))]
        elapsed = float("nan")
    else:
        df, elapsed = collect(args)
    if args.csv:
        df.to_csv(args.csv, index=False)
    table = score(df)
    from medscale.scaling.run.processor import processor

    cpu = processor()
    n_cells = df.groupby(["study", "scenario"])["index"].nunique()
    head = [f"processor: {cpu.describe()}; {os.cpu_count()} cores, {args.jobs} processes; load average "
            f"{os.getloadavg()[0]:.2f} (1 min) at the end",
            f"command: python benchmarks/bench_coverage.py {' '.join(sys.argv[1:] if argv is None else argv)}",
            "analysis/ digest (sha1 of analysis/*.py when the studies ran): "
            + ", ".join(sorted(map(str, df.get("analysis", pd.Series(["?"])).fillna("?").unique()))),
            f"studies per study x scenario: {n_cells.min()}-{n_cells.max()}; n_boot {args.n_boot}; nominal level "
            f"{LEVEL:.0%}; {n_cells.sum()} studies "
            + (f"in {elapsed:.0f} s" if np.isfinite(elapsed) else "(scored from earlier --csv rows)"),
            "noise: log-normal run-to-run, sigma per study uniform in [0.5%, 1.5%]; misspecified: a Farseer-like or "
            "curved-power surface (half each; see the module docstring)",
            "coverage +- its Monte-Carlo standard error; **!** marks coverage outside 90-98%; width = median "
            "(high - low) / truth; error = median (value - truth) for exponents, median value/truth - 1 otherwise; "
            "s / fit = mean seconds per study of the method (for prototypes: on top of the product's fit they reuse)"]
    if not args.quick and not args.from_csv:
        kinds, scenarios = args.kinds.split(","), args.scenarios.split(",")
        fits = [f"{k}/{s}: {100 * misfit(k, s, args.seed):.2f}%" for k in kinds for s in scenarios]
        head.append("RMS log-residual of the fitted form (Approach 3 / data-constrained law, no noise) on 5 "
                    "studies: " + ", ".join(fits))
    used = [m for m in METHODS if m in set(df["method"])]
    notes = "\n".join(f"- `{m}`: {NOTES.get(m, '')}" for m in used)
    text = "\n".join(head) + "\n\nmethods:\n\n" + notes + "\n\n" + markdown(table) + "\n"
    print(text)
    if not args.no_write:
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"coverage-{cpu.kind}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Coverage of nominal 95% intervals on synthetic studies\n\n" + text)
        print(f"wrote {out}")
    return table, text


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
