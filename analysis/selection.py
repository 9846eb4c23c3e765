"""Which law to trust: choose among law families by how well they extrapolate, and predict planned runs.

A law is bought to extrapolate, so families are scored where they extrapolate, on the table's own costlier
runs (rolling-origin validation):

    for each cut f in `cuts` (default 10%, 20%, 30%): fit every family (no bootstrap) to the runs below the
    top f of runs in an order, predict those top-f runs, and score the held-out predictions by the mean
    absolute percentage error (MAPE) of the loss and R^2 over the held-out runs. A cut whose held-out runs are
    the same as a smaller cut's (ties: several runs per model size) is not counted twice.

The order is aimed at the extrapolation the study needs (`validation_orders`). Given a target, the planned
runs' sizes (params, tokens; never a loss), the runs are held out by N (the largest models) and by D (the
longest runs), and each order's error counts in proportion to how far the target's centre lies beyond the runs
along that axis (log excess over the largest N and the largest D): a target 17x larger in N at ordinary token
counts is scored on held-out larger models, one trained on 10x more tokens than any run on held-out longer runs.
Without a target, or with one inside the runs' range, the order is compute (the costliest runs held out). Why:
on Gadre et al. 2024 compute order holds out the small models' longest runs and prefers Chinchilla's two
exponents, while the costly runs lie 3-17x beyond in N, where one exponent for N and D extrapolates best;
benchmarks/results/families.md has the numbers per table.

A family's validation error is its MAPE averaged over the cuts (then over the orders by their share), floored
at ERROR_FLOOR (0.01%: differences below it are numerical, not evidence). The rule (`RULE`, default
"inverse_square"): weights proportional to 1 / error^2 (Bates & Granger's inverse mean-squared-error
combination, with MAPE^2 standing in for the mean squared relative error); "best" puts all weight on the chosen
family. A family that cannot be fitted on some
cut gets weight 0. `chosen` is the family with the lowest error, except that a family with fewer parameters
whose error is within 5% (TIE) of the lowest is preferred (nested laws tie on data from the smaller one).

Predictions (`FamilyChoice.predict`, `predict_planned`): the loss is the weighted mean of the families' point
predictions; its interval is the `level` quantile range of the MIXTURE of the families' bootstrap draws, each
family's draws carrying its weight, every draw multiplied by a run-to-run noise factor exp(r) with r resampled
from that family's own (centred, inflated) log residuals. So the interval covers: the law's parameter
uncertainty (bootstrap over runs), the spread between the families in proportion to their weights, and the
scatter of a single new run around the law, as seen on the fitted runs. It does NOT cover a shared error of
every family beyond the fitted range, nor a change of recipe at the target (batch size, schedule, data).
N_opt at a budget gets the same treatment (mixture of the families' N_opt draws, no run noise), on 6ND = C or,
given `flops_per_token(N)`, on the full FLOP count (each law minimised numerically along D = C / f(N)).
`interval_noise="validation"` draws each family's noise instead from its own errors on the held-out costlier
runs of the validation (both signs): the interval then also covers the law's misfit when extrapolating as far as
the validation did, at the price of counting the parameter uncertainty of the smaller fits twice.

Warnings a scientist acts on: families that disagree at a planned run by more than their own intervals (the
choice of law then dominates the uncertainty), and targets farther beyond the fitted compute than the
validation ever extrapolated (the weights are then evidence about shorter extrapolations only).

Optional `run_weighting=g` weights each run's Huber term by (C / C_max)^g (normalised to mean 1), pulling the
fit toward the costliest runs; benchmarks/bench_families.py measures whether that helps.

numpy/scipy/pandas only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .summary import _plain
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate, parallel_map
from .conventions import PARAMS_COLUMNS, PARAMS_CONVENTIONS, compute_6nd, tokens_for_compute
from .errors import AnalysisError
from .families import (DEFAULT_N_BOOT, FAMILIES, ChinchillaFamily, DataConstrainedFamily, LawFamily, make_family)
from .inputs import average_replicates, positive, require_columns

DEFAULT_CUTS = (0.1, 0.2, 0.3)
ERROR_FLOOR = 0.01  # %, MAPE below which validation errors count as equal
TIE = 1.05  # a simpler family within this factor of the lowest error is chosen
RULES = ("inverse_square", "best")
RULE = "inverse_square"
# Families below this weight are left out of the disagreement check (they barely move the mixture).
MIN_WEIGHT = 0.05
# Warn when a target's compute is more than this factor beyond what the validation extrapolated.
FAR_FACTOR = 3.0


# ---------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------
def scores(predicted, observed) -> dict[str, float]:
    """MAPE (%), R^2 over the points (1 - SS_res / SS_tot around their mean), mean signed error (%)."""
    p, o = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    rel = p / o - 1.0
    ss_tot = float(((o - o.mean()) ** 2).sum())
    r2 = 1.0 - float(((p - o) ** 2).sum()) / ss_tot if o.size > 1 and ss_tot > 0 else float("nan")
    return {"mape": 100 * float(np.mean(np.abs(rel))), "r2": r2, "bias": 100 * float(np.mean(rel)),
            "max_abs": 100 * float(np.max(np.abs(rel)))}


def run_weights(compute, gamma: float | None) -> np.ndarray | None:
    """(C / C_max)^gamma normalised to mean 1, or None for gamma None/0 (every run counts the same)."""
    if not gamma:
        return None
    c = np.asarray(compute, dtype=float)
    w = np.exp(gamma * (np.log(c) - np.log(c.max())))
    return w / w.mean()


def rolling_origin(params, tokens, loss, unique_tokens=None, *, families=None, cuts=DEFAULT_CUTS,
                   order: str = "compute", run_weighting: float | None = None, family_kw: dict | None = None,
                   n_jobs: int | None = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rolling-origin validation: per cut and family, fit below the cut, score above it.

    `order`: 'compute', 'params' (the largest models held out) or 'tokens' (the longest runs). A cut whose held-out
    runs are those of a smaller cut (ties) is skipped: the same evidence once. The (cut, family) fits are
    independent: `n_jobs` processes share them.

    Returns (table, errors): one row per (cut, family) with the order, n_train, n_test, the compute ratio the cut
    extrapolates over (largest held-out / largest fitted), MAPE, R^2, bias and status; and one row per held-out
    run and family with its observed and predicted loss and the relative error.
    """
    N, D, L = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    U = None if unique_tokens is None else np.asarray(unique_tokens, dtype=float)
    names = list(families or default_families(U is not None))
    key = {"compute": compute_6nd(N, D), "params": N, "tokens": D}.get(order)
    if key is None:
        raise AnalysisError(f"order must be 'compute', 'params' or 'tokens'; got {order!r}")
    C = compute_6nd(N, D)
    kw = {"n_boot": 0, **(family_kw or {})}
    kw["n_boot"] = 0
    folds, seen = [], []
    srt = np.sort(key)
    for f in cuts:
        n_test = max(1, int(math.ceil(f * N.size)))
        thr = srt[N.size - n_test]
        test = key >= thr
        if any((test == t).all() for t in seen):  # ties (several runs per model size): the same fold again
            continue
        seen.append(test)
        folds += [(float(f), test, name) for name in names]
    jobs = [(name, kw, N, D, L, U, ~test, test, run_weights(C[~test], run_weighting)) for _, test, name in folds]
    rows, errs = [], []
    for (f, test, name), (scored, pred) in zip(folds, parallel_map(_fold, jobs, n_jobs)):
        train = ~test
        rows.append({"order": order, "cut": f, "n_train": int(train.sum()), "n_test": int(test.sum()),
                     "compute_ratio": float(C[test].max() / C[train].max()) if train.any() else float("nan"),
                     "family": name, "mape": np.nan, "r2": np.nan, "bias": np.nan, "max_abs": np.nan, **scored})
        if pred is not None:
            errs += [{"order": order, "cut": f, "family": name, "params": n, "tokens": d, "compute": c, "loss": o,
                      "predicted": q, "rel_error": q / o - 1.0}
                     for n, d, c, o, q in zip(N[test], D[test], C[test], L[test], pred)]
    cols = ["order", "cut", "family", "n_train", "n_test", "compute_ratio", "mape", "r2", "bias", "max_abs", "status"]
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(errs, columns=["order", "cut", "family", "params", "tokens",
                                                                        "compute", "loss", "predicted", "rel_error"])


def _fold(job) -> tuple[dict, np.ndarray | None]:
    """One family fitted on a fold's training runs and scored on its held-out ones: (scores and status,
    predictions or None)."""
    name, kw, N, D, L, U, train, test, w = job
    try:
        fam = make_family(name, **kw)
        fam.fit(N[train], D[train], L[train], None if U is None else U[train], weights=w)
        pred = fam.predict(N[test], D[test], None if U is None else U[test])
        if not np.isfinite(pred).all():
            raise AnalysisError("non-finite predictions")
        return {**scores(pred, L[test]), "status": "ok"}, pred
    except AnalysisError as e:
        return {"status": f"not fitted: {e}"}, None


ORDERS = ("auto", "compute", "params", "tokens", "target")


def validation_orders(params, tokens, target=None, order: str = "auto") -> dict[str, float]:
    """The orders the rolling origin holds runs out by, each with the share it counts for in a family's error.

    'compute', 'params' or 'tokens': that order alone. 'target', or 'auto' given a target: the folds stand for the
    extrapolation the target asks for. `target` is (params, tokens) of the planned runs (their sizes only); its
    excess beyond the runs along each axis, e_N = max(0, mean log N_target - log max N) and e_D likewise for D,
    weights the folds held out by N (the largest models) and by D (the longest runs): shares e_N / (e_N + e_D) and
    e_D / (e_N + e_D). A target bigger in N than any run is scored on held-out larger models; one trained on more
    tokens than any run, on held-out longer runs. 'auto' without a target, or a target inside the runs' range on
    both axes: compute order (the costliest runs held out)."""
    if order in ("compute", "params", "tokens"):
        return {order: 1.0}
    if order not in ("auto", "target"):
        raise AnalysisError(f"order must be one of {ORDERS}; got {order!r}")
    if target is None:
        if order == "target":
            raise AnalysisError("order='target' needs target=(params, tokens) of the planned runs")
        return {"compute": 1.0}
    try:
        tN, tD = target
    except (TypeError, ValueError):
        raise AnalysisError("target must be a pair (params, tokens) of the planned runs' sizes") from None
    tN = positive(np.atleast_1d(np.asarray(tN, dtype=float)), "target params")
    tD = positive(np.atleast_1d(np.asarray(tD, dtype=float)), "target tokens")
    excess = {"params": max(0.0, float(np.log(tN).mean() - np.log(np.max(params)))),
              "tokens": max(0.0, float(np.log(tD).mean() - np.log(np.max(tokens))))}
    tot = sum(excess.values())
    if tot <= 0:
        return {"compute": 1.0}
    return {k: v / tot for k, v in excess.items() if v > 0}


def pick(errors: dict[str, float], n_params: dict[str, int] | None = None) -> str | None:
    """The family with the lowest validation error (floored at ERROR_FLOOR); among those within TIE of it, the
    one with the fewest parameters. None when no error is finite."""
    e = {k: max(float(v), ERROR_FLOOR) for k, v in errors.items() if np.isfinite(v)}
    if not e:
        return None
    lo = min(e.values())
    close = [k for k in e if e[k] <= TIE * lo]
    n_params = n_params or {k: make_family(k).n_params for k in close}
    return min(close, key=lambda k: (n_params[k], e[k]))


def family_weights(errors: dict[str, float], rule: str = RULE, n_params: dict[str, int] | None = None
                   ) -> dict[str, float]:
    """Weights from validation errors (MAPE, %): 'inverse_square' w ~ 1/max(err, ERROR_FLOOR)^2; 'best' all on
    `pick`'s family. Families with a non-finite error get 0; with none finite, equal weights."""
    if rule not in RULES:
        raise AnalysisError(f"rule must be one of {RULES}; got {rule!r}")
    names = list(errors)
    e = np.array([errors[k] for k in names], dtype=float)
    ok = np.isfinite(e)
    if not ok.any():
        return {k: 1.0 / len(names) for k in names}
    if rule == "best":
        best = pick(errors, n_params)
        return {k: float(k == best) for k in names}
    raw = np.where(ok, 1.0 / np.maximum(np.where(ok, e, 1.0), ERROR_FLOOR) ** 2, 0.0)
    return {k: float(v) for k, v in zip(names, raw / raw.sum())}


def default_families(with_unique_tokens: bool) -> tuple[str, ...]:
    return FAMILIES if with_unique_tokens else tuple(f for f in FAMILIES if f != "data_constrained")


# ---------------------------------------------------------------------------------------------------------
# mixtures
# ---------------------------------------------------------------------------------------------------------
def weighted_quantiles(draws: np.ndarray, weights: np.ndarray, qs) -> np.ndarray:
    """Quantiles over axis 0 of draws (M, n) with one weight per draw (NaN draws ignored): (len(qs), n)."""
    draws = np.asarray(draws, dtype=float)
    out = np.full((len(qs), draws.shape[1]), np.nan)
    for j in range(draws.shape[1]):
        v, w = draws[:, j], np.asarray(weights, dtype=float)
        ok = ~np.isnan(v) & (w > 0)
        if not ok.any():
            continue
        v, w = v[ok], w[ok]
        o = np.argsort(v, kind="stable")
        v, cw = v[o], np.cumsum(w[o])
        cw /= cw[-1]
        for i, q in enumerate(qs):
            out[i, j] = v[min(int(np.searchsorted(cw, q, side="left")), v.size - 1)]
    return out


@dataclass
class MixtureEstimate:
    """A mixture's value and interval, with each family's own estimate and weight."""

    value: float
    low: float
    high: float
    per_family: dict[str, Estimate] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        f = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731
        return {"value": f(self.value), "interval": [f(self.low), f(self.high)],
                "per_family": {k: v.to_dict() for k, v in self.per_family.items()},
                "weights": dict(self.weights), "warnings": list(self.warnings)}


# ---------------------------------------------------------------------------------------------------------
# the choice
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FamilyChoice:
    """Fitted families, their validation on costlier runs, weights, and mixture predictions."""

    families: dict[str, LawFamily]
    weights: dict[str, float]
    validation: pd.DataFrame | None = None  # per (cut, family)
    summary: pd.DataFrame | None = None  # per family: error, R^2, weight
    errors: pd.DataFrame | None = None  # per held-out run and family
    rule: str = RULE
    level: float = DEFAULT_LEVEL
    columns: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    orders: dict = field(default_factory=dict)  # the validation's orders and their shares (validation_orders)
    max_compute: float = float("nan")  # the largest fitted run's 6ND
    validated_ratio: float = float("nan")  # the largest compute ratio the validation extrapolated over
    seed: int = 0
    interval_noise: str = "residuals"  # a new run's noise: the fit's residuals, or 'validation' (held-out errors)

    @property
    def chosen(self) -> str:
        """`pick` on the validation errors (lowest error, ties to fewer parameters); without a validation, the
        family with the largest weight."""
        if self.summary is not None:
            s = self.summary[self.summary["family"].isin(list(self.families))]
            k = pick(dict(zip(s["family"], s["mape"])), dict(zip(s["family"], s["n_params"])))
            if k is not None:
                return k
        return max(self.weights, key=self.weights.get)

    def _active(self) -> list[str]:
        return [k for k, w in self.weights.items() if w > 0 and k in self.families]

    # -- mixtures ----------------------------------------------------------------------------------------
    def noise_pool(self, family: str) -> np.ndarray | None:
        """The log errors a new run's noise is drawn from under `interval_noise`: None (the family's own
        residuals) or, for 'validation', its held-out errors on the costlier runs of every cut, with both
        signs (their size, not their bias)."""
        if self.interval_noise != "validation" or self.errors is None or not len(self.errors):
            return None
        e = np.log1p(self.errors.loc[self.errors["family"] == family, "rel_error"].to_numpy(dtype=float))
        e = e[np.isfinite(e)]
        return np.concatenate([e, -e]) if e.size else None

    def mixture_draws(self, params, tokens, unique_tokens=None, *, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(draws (M, n), weight per draw): every active family's bootstrap draws, each family summing to its
        weight; with noise a new run's scatter is included (see the module docstring)."""
        blocks, ws = [], []
        for k in self._active():
            d = self.families[k].predict_draws(params, tokens, unique_tokens, noise=noise,
                                               seed=self.seed + 7919 + 31 * len(blocks), noise_pool=self.noise_pool(k))
            ok = np.isfinite(d).all(axis=1) if d.size else np.zeros(0, bool)
            if not ok.any():
                pt = np.atleast_1d(self.families[k].predict(params, tokens, unique_tokens))[None]
                d, ok = pt, np.ones(1, bool)
            blocks.append(d[ok])
            ws.append(np.full(int(ok.sum()), self.weights[k] / ok.sum()))
        return np.vstack(blocks), np.concatenate(ws)

    def predict(self, params, tokens, unique_tokens=None, *, noise: bool = True) -> pd.DataFrame:
        """Per point: the weighted loss, its mixture interval, each family's own prediction and interval
        (parameters only), and whether the families disagree beyond those intervals."""
        N = np.atleast_1d(np.asarray(params, dtype=float))
        D = np.atleast_1d(np.asarray(tokens, dtype=float))
        N, D = np.broadcast_arrays(N, D)
        out = pd.DataFrame({"params": N, "tokens": D, "compute": compute_6nd(N, D)})
        act = self._active()
        pts = {k: np.atleast_1d(self.families[k].predict(N, D, unique_tokens)).astype(float) for k in act}
        wsum = sum(self.weights[k] for k in act)
        out["loss"] = sum(self.weights[k] * pts[k] for k in act) / wsum
        draws, w = self.mixture_draws(N, D, unique_tokens, noise=noise)
        a = (1 - self.level) / 2
        out["low"], out["high"] = weighted_quantiles(draws, w, [a, 1 - a])
        lows, highs = {}, {}
        for k in self.families:
            fam = self.families[k]
            out[f"loss_{k}"] = np.atleast_1d(fam.predict(N, D, unique_tokens)).astype(float)
            d = fam.predict_draws(N, D, unique_tokens, noise=False)
            if d.size and np.isfinite(d).any():
                lows[k], highs[k] = weighted_quantiles(d, np.ones(len(d)), [a, 1 - a])
            else:
                lows[k] = highs[k] = out[f"loss_{k}"].to_numpy()
            out[f"low_{k}"], out[f"high_{k}"] = lows[k], highs[k]
        heavy = [k for k in act if self.weights[k] >= MIN_WEIGHT]
        if len(heavy) > 1:
            lo = np.max([lows[k] for k in heavy], axis=0)
            hi = np.min([highs[k] for k in heavy], axis=0)
            out["disagree"] = lo > hi
            vals = np.array([out[f"loss_{k}"] for k in heavy])
            out["family_spread_pct"] = 100 * (vals.max(axis=0) - vals.min(axis=0)) / out["loss"]
        else:
            out["disagree"] = False
            out["family_spread_pct"] = 0.0
        return out

    def n_opt(self, budget: float, unique_tokens=None, flops_per_token=None) -> MixtureEstimate:
        """N_opt at `budget` FLOPs on 6ND = C (or, with `flops_per_token(N)`, on the full count: D = C / f(N)):
        each family's estimate, their weighted geometric mean, and the interval of the mixture of their
        bootstrap N_opt draws."""
        per, blocks, ws, open_ends = {}, [], [], []
        act = self._active()
        for k in self.families:
            try:
                per[k], d = _family_n_opt(self.families[k], budget, unique_tokens, flops_per_token)
            except AnalysisError:
                continue
            if k in act:
                d = np.asarray(d, dtype=float)
                d = d[~np.isnan(d)]
                edge = float(np.mean(~np.isfinite(d))) if d.size else 0.0
                if edge > (1 - self.level) / 2:
                    open_ends.append(f"{k} ({edge:.0%} of its draws)")
                if not d.size:
                    d = np.array([per[k].value])
                with np.errstate(divide="ignore"):
                    blocks.append(np.log(d))  # +-inf: no optimum inside the search range for that draw
                ws.append(np.full(d.size, self.weights[k] / d.size))
        logv = [(self.weights[k], np.log(per[k].value)) for k in act if k in per and per[k].value > 0
                and np.isfinite(per[k].value)]
        value = float(np.exp(sum(w * v for w, v in logv) / sum(w for w, _ in logv))) if logv else float("nan")
        a = (1 - self.level) / 2
        lo = hi = float("nan")
        if blocks:
            with np.errstate(invalid="ignore"):
                q = weighted_quantiles(np.concatenate(blocks)[:, None], np.concatenate(ws), [a, 1 - a])[:, 0]
            lo, hi = float(np.exp(q[0])), float(np.exp(q[1]))
        warns = []
        heavy = [k for k in act if k in per and self.weights[k] >= MIN_WEIGHT and np.isfinite(per[k].low)]
        if len(heavy) > 1 and max(per[k].low for k in heavy) > min(per[k].high for k in heavy):
            txt = ", ".join(f"{k} {per[k].value:.3g} [{per[k].low:.3g}, {per[k].high:.3g}]" for k in heavy)
            warns.append(f"the laws disagree on N_opt at {budget:.3g} FLOPs beyond their own intervals ({txt}): "
                         f"which law holds decides the model size; the mixture interval [{lo:.3g}, {hi:.3g}] spans "
                         "them. An IsoFLOP profile at the largest budget you can afford measures it directly")
        if open_ends:
            line = f"6ND = {budget:.3g}" if flops_per_token is None else f"the full FLOP count = {budget:.3g}"
            warns.append(f"along {line} the loss of {', '.join(open_ends)} keeps falling to the edge of "
                         "the search range (no optimum inside): the N_opt interval is open-ended there, so these runs "
                         "do not fix the compute-optimal size for that law")
        return MixtureEstimate(value, lo, hi, per, {k: self.weights[k] for k in self.families}, warns)

    # -- planned runs ------------------------------------------------------------------------------------
    def predict_planned(self, planned, *, params: str | None = None, tokens: str | None = None,
                        compute: str | None = None, unique_tokens: str | None = None) -> pd.DataFrame:
        """See `predict_planned`."""
        return _predict_planned(self, planned, params=params, tokens=tokens, compute=compute,
                                unique_tokens=unique_tokens)

    def to_dict(self) -> dict:
        rec = lambda df: None if df is None else [{k: _plain(v) for k, v in r.items()}  # noqa: E731
                                                  for r in df.to_dict(orient="records")]
        return {"rule": self.rule, "chosen": self.chosen, "weights": dict(self.weights),
                "validation": rec(self.validation), "validation_orders": dict(self.orders),
                "summary": rec(self.summary),
                "families": {k: f.to_dict() for k, f in self.families.items()},
                "interval_level": self.level, "warnings": list(self.warnings), "notes": list(self.notes)}


def _family_n_opt(fam: LawFamily, budget: float, unique_tokens, flops_per_token) -> tuple[Estimate, np.ndarray]:
    """A family's N_opt at `budget` and its bootstrap draws: the family's own (6ND = C) without
    `flops_per_token`, else numerically along D = budget / flops_per_token(N) (`_line_n_opt`)."""
    if flops_per_token is None:
        est = fam.n_opt(budget, unique_tokens)
        return est, (fam.n_opt_draws(budget, unique_tokens) if fam.n_boot else np.empty(0))
    value = float(np.exp(_line_n_opt(lambda N, D: fam.predict(N, D, unique_tokens)[None], budget,
                                     flops_per_token)[0]))
    draws = np.exp(_line_n_opt(lambda N, D: fam.predict_draws(N, D, unique_tokens), budget, flops_per_token)) \
        if fam.n_boot else np.empty(0)
    return estimate(value, draws if draws.size else None, fam.level), draws


LINE_SPAN = 12.0  # e-folds of N either side of sqrt(C / 120) searched for a numeric N_opt
LINE_STEP = 0.001  # the grid step (e-folds of N, 0.1%) of the refined search


def _line_n_opt(loss_rows, budget: float, flops_per_token) -> np.ndarray:
    """log N minimising each row of loss_rows(N (G,), D (G,)) -> (rows, G) along D = budget / flops_per_token(N):
    a coarse log grid, then a fine one (LINE_STEP) over the span of the rows' coarse minima. +-inf where a row's
    minimum is at the edge of the search (no optimum inside), NaN where its loss is nowhere finite."""
    centre = 0.5 * np.log(budget / 120.0)
    x = np.linspace(centre - LINE_SPAN, centre + LINE_SPAN, 481)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        L = np.asarray(loss_rows(np.exp(x), budget / flops_per_token(np.exp(x))), dtype=float)
    L = np.where(np.isfinite(L), L, np.inf)
    i = np.argmin(L, axis=1)
    bad, edge = ~np.isfinite(L).any(axis=1), np.where(i == 0, -1.0, np.where(i == x.size - 1, 1.0, 0.0))
    inner = ~bad & (edge == 0)
    out = np.where(bad | (edge == 0), np.nan, np.where(edge < 0, -np.inf, np.inf))
    if inner.any():
        step = x[1] - x[0]
        fine = np.arange(x[i[inner]].min() - step, x[i[inner]].max() + step + LINE_STEP, LINE_STEP)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            Lf = np.asarray(loss_rows(np.exp(fine), budget / flops_per_token(np.exp(fine))), dtype=float)[inner]
        out[inner] = fine[np.argmin(np.where(np.isfinite(Lf), Lf, np.inf), axis=1)]
    return out


def choose(params, tokens, loss, unique_tokens=None, *, families=None, cuts=DEFAULT_CUTS, order: str = "auto",
           rule: str = RULE, run_weighting: float | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
           n_jobs: int | None = 1, level: float = DEFAULT_LEVEL, seeds=None, lrs=None,
           validate: bool = True, interval_noise: str = "residuals", fitted: dict | None = None,
           target=None) -> FamilyChoice:
    """Validate the families on the runs' costlier end, weight them, and fit each to all runs with a bootstrap.

    `fitted` (name -> a family already fitted to these same runs, e.g. `ChinchillaFamily.from_fit` of the
    report's Approach 3) is used as is instead of refitting that family: one fit, one number.
    `target` (params, tokens) of the planned runs, sizes only: with `order` 'auto' (default) the validation holds
    runs out along the axes the target leaves the runs' range by (`validation_orders`); without it, by compute.
    Arrays in, a FamilyChoice out (`fit_families` is the same from a table by column names). Replicates are
    merged first (seeds averaged, the best learning rate kept), so every family sees the same runs."""
    N, D, L = positive(params, "params"), positive(tokens, "tokens"), positive(loss, "loss")
    U = None if unique_tokens is None else positive(unique_tokens, "unique_tokens")
    keys = {"N": N, "D": D} if U is None else {"N": N, "D": D, "U": U}
    keep, rep, notes = average_replicates(keys, L, seed=seeds, lr=lrs)
    N, D, L = N[keep], D[keep], rep.loss
    U = None if U is None else U[keep]
    names = list(families or default_families(U is not None))
    bad = [k for k in names if k not in FAMILIES]
    if bad:
        raise AnalysisError(f"unknown law families {bad}: choose from {', '.join(FAMILIES)}")
    if "data_constrained" in names and U is None:
        raise AnalysisError("the data_constrained family needs unique tokens (unique_tokens)")
    if interval_noise not in INTERVAL_NOISE:
        raise AnalysisError(f"interval_noise must be one of {INTERVAL_NOISE}; got {interval_noise!r}")
    warnings: list[str] = []
    table = summary = errs = None
    C = compute_6nd(N, D)
    validated_ratio = float("nan")
    orders = validation_orders(N, D, target, order)
    if validate and len(names) > 1:
        tables, errl, used = [], [], {}
        err = {k: 0.0 for k in names}
        r2 = {k: 0.0 for k in names}
        for o, share in orders.items():
            tb, er = rolling_origin(N, D, L, U, families=names, cuts=cuts, order=o, run_weighting=run_weighting,
                                    n_jobs=n_jobs)
            tb["share"] = share
            tables.append(tb)
            errl.append(er)
            ok_cuts = tb.groupby("cut")["status"].apply(lambda s: (s == "ok").any())
            t = tb[tb["cut"].isin(ok_cuts[ok_cuts].index)]
            if not len(t):
                continue
            used[o] = share
            for k in names:
                g = t[t.family == k]
                e = float(g["mape"].mean()) if len(g) and (g["status"] == "ok").all() else float("inf")
                err[k] += share * e
                r2[k] += share * float(g["r2"].mean()) if len(g) else float("nan")
        table, errs = pd.concat(tables, ignore_index=True), pd.concat(errl, ignore_index=True)
        tot = sum(used.values())
        err = {k: (err[k] / tot if tot > 0 else float("inf")) for k in names}
        r2 = {k: (r2[k] / tot if tot > 0 else float("nan")) for k in names}
        weights = family_weights(err, rule)
        summary = pd.DataFrame({"family": names, "n_params": [make_family(k).n_params for k in names],
                                "mape": [err[k] for k in names], "r2": [r2[k] for k in names],
                                "weight": [weights[k] for k in names]})
        if used:
            validated_ratio = float(table.loc[table["order"].isin(list(used)) & (table["status"] == "ok"),
                                              "compute_ratio"].max())
        else:
            warnings.append("too few runs to validate the families on held-out costlier runs: they are weighted "
                            "equally")
        by = " and ".join(f"{o} (share {w:.2f})" if len(orders) > 1 else o for o, w in orders.items())
        notes.append(f"families weighted by their extrapolation error on the top {', '.join(f'{c:.0%}' for c in cuts)} "
                     f"of runs by {by}" + (" (the axes the target leaves the runs' range by)" if target is not None
                                          and order in ("auto", "target") else "")
                     + f" (rolling origin, rule {rule}: "
                     + ("weights ~ 1/MAPE^2" if rule == "inverse_square" else "all weight on the lowest MAPE") + ")")
    else:
        weights = {k: 1.0 / len(names) for k in names}
    fams: dict[str, LawFamily] = {}
    w_runs = run_weights(C, run_weighting)
    for k in names:
        if fitted and k in fitted and w_runs is None:
            fams[k] = fitted[k]
            continue
        try:
            fam = make_family(k, n_boot=n_boot, seed=seed, n_jobs=n_jobs, level=level)
            fams[k] = fam.fit(N, D, L, U, weights=w_runs)
        except AnalysisError as e:
            warnings.append(f"the {k} law could not be fitted to all runs: {e}")
            weights[k] = 0.0
    tot = sum(weights[k] for k in fams)
    if not fams or tot <= 0:
        raise AnalysisError("no law family could be fitted to these runs")
    weights = {k: (weights[k] / tot if k in fams else 0.0) for k in names}
    ch = FamilyChoice(families=fams, weights=weights, validation=table, summary=summary, errors=errs, rule=rule,
                      level=level, warnings=warnings, notes=notes, max_compute=float(C.max()), orders=orders,
                      validated_ratio=validated_ratio, seed=seed, interval_noise=interval_noise)
    for k, f in fams.items():
        ch.warnings += [f"{k}: {w}" for w in f.warnings_ if weights[k] >= MIN_WEIGHT]
    if summary is not None and np.isfinite(summary["mape"]).any():
        ch.notes.append(f"chosen law: {ch.chosen}; extrapolation error on held-out costlier runs: "
                        + ", ".join(f"{r.family} {r.mape:.2f}% (weight {r.weight:.2f})" for r in summary.itertuples()))
    return ch


def _columns(df: pd.DataFrame, params, tokens, compute, params_convention=None) -> tuple[np.ndarray, np.ndarray]:
    if params_convention is not None:
        if params_convention not in PARAMS_CONVENTIONS:
            raise AnalysisError(f"params convention {params_convention!r}: choose one of {PARAMS_CONVENTIONS}")
        params = PARAMS_COLUMNS[params_convention]
    if params is None:
        raise AnalysisError("a params column (N) is needed")
    if tokens is None and compute is None:
        raise AnalysisError("give a tokens column, a compute column, or both")
    require_columns(df, [c for c in (params, tokens, compute) if c is not None])
    N = positive(df[params], params)
    D = positive(df[tokens], tokens) if tokens is not None else tokens_for_compute(positive(df[compute], compute), N)
    return N, D


def fit_families(df: pd.DataFrame | str | Path, *, params: str | None = None, loss: str, tokens: str | None = None,
                 compute: str | None = None, unique_tokens: str | None = None, seed_col: str | None = "seed",
                 lr_col: str | None = "lr", params_convention: str | None = None, families=None,
                 cuts=DEFAULT_CUTS, order: str = "auto", rule: str = RULE, run_weighting: float | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, n_jobs: int | None = 1,
                 level: float = DEFAULT_LEVEL, interval_noise: str = "residuals", target=None) -> FamilyChoice:
    """`choose` on a table (DataFrame, or a .csv/.parquet path) by the column names `fit_table` takes.

    Give tokens, compute or both (D = C / (6N) fills a missing tokens column). Rows that share a point are
    replicates: seeds (`seed_col`) are averaged, the best learning rate (`lr_col`) is kept. `target`: see `choose`
    (the planned runs' (params, tokens); their losses are never used)."""
    if not isinstance(df, pd.DataFrame):
        from .summary import read_table

        df = read_table(df)
    if len(df) == 0:
        raise AnalysisError("the table has no rows")
    require_columns(df, [loss] + ([unique_tokens] if unique_tokens else []))
    N, D = _columns(df, params, tokens, compute, params_convention)
    L = positive(df[loss], loss)
    U = positive(df[unique_tokens], unique_tokens) if unique_tokens else None
    seeds = df[seed_col].to_numpy() if seed_col and seed_col in df.columns else None
    lrs = df[lr_col].to_numpy(dtype=float) if lr_col and lr_col in df.columns else None
    ch = choose(N, D, L, U, families=families, cuts=cuts, order=order, rule=rule, run_weighting=run_weighting,
                n_boot=n_boot, seed=seed, n_jobs=n_jobs, level=level, seeds=seeds, lrs=lrs,
                interval_noise=interval_noise, target=target)
    ch.columns = {"params": PARAMS_COLUMNS[params_convention] if params_convention else params, "tokens": tokens,
                  "compute": compute, "unique_tokens": unique_tokens, "loss": loss}
    return ch


# ---------------------------------------------------------------------------------------------------------
# planned runs
# ---------------------------------------------------------------------------------------------------------
def as_choice(source, *, weights: dict | None = None, **fit_kwargs) -> FamilyChoice:
    """A FamilyChoice from: a FamilyChoice; a fit_table FitResult or a ParametricFit / DataConstrainedFit (that
    one law, weight 1, no validation); a fitted LawFamily or a list/dict of them (equal weights unless
    `weights`); or a table of runs (DataFrame or path), fitted with `fit_families(source, **fit_kwargs)`."""
    if isinstance(source, FamilyChoice):
        return source
    if isinstance(source, (pd.DataFrame, str, Path)):
        return fit_families(source, **fit_kwargs)
    inner = getattr(source, "fit", None)
    if inner is not None and not callable(inner):  # a summary.FitResult
        src_cols = dict(getattr(source, "columns", {}) or {})
        ch = as_choice(inner)
        ch.columns = src_cols
        return ch
    if isinstance(source, LawFamily):
        source = [source]
    if isinstance(source, (list, tuple)):
        source = {f.name: f for f in source}
    if isinstance(source, dict):
        fams = dict(source)
        w = {k: 1.0 for k in fams} if weights is None else {k: float(weights.get(k, 0.0)) for k in fams}
        tot = sum(w.values())
        if tot <= 0:
            raise AnalysisError("the family weights must not all be zero")
        return FamilyChoice(families=fams, weights={k: v / tot for k, v in w.items()},
                            level=next(iter(fams.values())).level,
                            max_compute=float(max(compute_6nd(f.data_["params"], f.data_["tokens"]).max()
                                                  for f in fams.values())),
                            notes=["families given, not validated: weights "
                                   + ("equal" if weights is None else "given")])
    from .data_constrained import DataConstrainedFit
    from .parametric import ParametricFit

    if isinstance(source, ParametricFit):
        return as_choice(ChinchillaFamily.from_fit(source))
    if isinstance(source, DataConstrainedFit):
        return as_choice(DataConstrainedFamily.from_fit(source))
    raise AnalysisError("predict_planned needs a FamilyChoice, a fit_table result (Approach 3), fitted law "
                        f"families or a table of runs; got {type(source).__name__}")


def predict_planned(source, planned: pd.DataFrame | str | Path, *, params: str | None = None,
                    tokens: str | None = None, compute: str | None = None, unique_tokens: str | None = None,
                    **fit_kwargs) -> pd.DataFrame:
    """Predicted loss, with a `level` interval across families, for each planned run, in the planned order.

    `source`: see `as_choice` (a table of runs is fitted with `fit_families(source, **fit_kwargs)`, which takes
    fit_table's column arguments: params, loss, tokens, compute, unique_tokens, seed_col, lr_col...).
    `planned`: a DataFrame or .csv/.parquet path with a params column and a tokens or compute column (by default
    the names the fit used; `params`, `tokens`, `compute`, `unique_tokens` override). A row with compute but no
    params (empty) is planned at the mixture's N_opt for that compute. The unique-tokens column is read when
    the data-constrained law is among the families; without it every token counts as new.

    Returns the planned table with: params, tokens, compute (6ND); loss, loss_low, loss_high (the mixture's
    prediction for a NEW run and its interval: parameters, families and run-to-run scatter; see the module
    docstring); n_opt, n_opt_low, n_opt_high (compute-optimal N at the row's compute, same mixture, no run
    noise); loss_<family> for each family; disagree (the families' own intervals do not overlap), family_spread_pct,
    extrapolation (the row's compute over the largest fitted run's), params_from ('planned' or 'n_opt').
    `.attrs` carries 'warnings' (sentences), 'weights', 'chosen' and 'interval' (what the interval covers).
    """
    fit_kwargs = dict(fit_kwargs)
    if isinstance(source, (pd.DataFrame, str, Path)):
        fit_kwargs.setdefault("params", params)
        fit_kwargs.setdefault("tokens", tokens)
        fit_kwargs.setdefault("compute", compute)
        fit_kwargs.setdefault("unique_tokens", unique_tokens)
    if isinstance(source, (pd.DataFrame, str, Path)) and "target" not in fit_kwargs:
        fit_kwargs["target"] = planned_sizes(planned, params=fit_kwargs.get("params"),
                                             tokens=fit_kwargs.get("tokens"), compute=fit_kwargs.get("compute"))
    ch = as_choice(source, **fit_kwargs)
    return _predict_planned(ch, planned, params=params, tokens=tokens, compute=compute, unique_tokens=unique_tokens)


def planned_sizes(planned, *, params: str | None = None, tokens: str | None = None, compute: str | None = None):
    """(params, tokens) of the planned rows (a DataFrame or .csv/.parquet path) that give both, tokens from
    compute (D = C / 6N) where only that is given: the `target` of `choose` / `fit_families`. Column names default
    to 'params', 'tokens', 'compute'. None when no row gives a size (rows planned at N_opt)."""
    if not isinstance(planned, pd.DataFrame):
        from .summary import read_table

        planned = read_table(planned)

    def col(name):
        return (np.array(pd.to_numeric(planned[name], errors="coerce"), dtype=float)
                if name and name in planned.columns else np.full(len(planned), np.nan))

    N = col(params or "params")
    D = col(tokens or "tokens")
    C = col(compute or "compute")
    with np.errstate(invalid="ignore", divide="ignore"):
        D = np.where(np.isfinite(D), D, C / (6 * N))
    ok = np.isfinite(N) & np.isfinite(D) & (N > 0) & (D > 0)
    return (N[ok], D[ok]) if ok.any() else None


INTERVAL_NOISE = ("residuals", "validation")
INTERVAL_COVERS = {
    "residuals": ("the loss of a new run: the laws' parameter uncertainty (bootstrap over runs), the spread between "
                  "families weighted by their validation error, and the run-to-run scatter seen on the fitted runs; "
                  "not an error every family shares beyond the fitted range, nor a change of recipe at the target"),
    "validation": ("the loss of a new run: the laws' parameter uncertainty (bootstrap over runs), the spread between "
                   "families weighted by their validation error, and a scatter the size of each family's errors on "
                   "held-out costlier runs (run noise plus its misfit when extrapolating); not a change of recipe "
                   "at the target"),
}


def _predict_planned(ch: FamilyChoice, planned, *, params=None, tokens=None, compute=None, unique_tokens=None
                     ) -> pd.DataFrame:
    if not isinstance(planned, pd.DataFrame):
        from .summary import read_table

        planned = read_table(planned)
    cols = ch.columns or {}
    pc = params or cols.get("params") or "params"
    tc = tokens or cols.get("tokens")
    cc = compute or cols.get("compute")
    uc = unique_tokens or cols.get("unique_tokens")
    # the fit's column names first, then the plain names 'tokens' and 'compute'
    tc = tc if tc in planned.columns else ("tokens" if "tokens" in planned.columns else None)
    cc = cc if cc in planned.columns else ("compute" if "compute" in planned.columns else None)
    if tc is None and cc is None:
        raise AnalysisError("the planned table needs a tokens or a compute column; it has "
                            f"{', '.join(map(str, planned.columns))}")
    n = len(planned)
    if n == 0:
        raise AnalysisError("the planned table has no rows")
    def col(name):  # a writable float copy, NaN where empty
        return np.array(pd.to_numeric(planned[name], errors="coerce"), dtype=float)

    N = col(pc) if pc in planned.columns else np.full(n, np.nan)
    D = col(tc) if tc else np.full(n, np.nan)
    C = col(cc) if cc else np.full(n, np.nan)
    U = col(uc) if uc and uc in planned.columns else None
    from_opt = ~np.isfinite(N) & np.isfinite(C)
    n_opt_rows = {}
    for i in np.flatnonzero(from_opt):
        est = ch.n_opt(C[i], None if U is None else U[i])
        n_opt_rows[i] = est
        N[i] = est.value
    C = np.where(np.isfinite(C), C, compute_6nd(N, D))
    D = np.where(np.isfinite(D), D, tokens_for_compute(C, N))
    bad = np.flatnonzero(~(np.isfinite(N) & np.isfinite(D) & (N > 0) & (D > 0)))
    if bad.size:
        raise AnalysisError(f"planned rows {', '.join(str(int(i)) for i in bad[:5])} have no positive params and "
                            "tokens (or compute) to predict")
    uses_u = any(f.needs_unique_tokens for f in ch.families.values())
    pred = ch.predict(N, D, U if uses_u else None)
    out = planned.copy().reset_index(drop=True)
    out["params"], out["tokens"], out["compute"] = N, D, C
    out["loss"] = pred["loss"].to_numpy()
    out["loss_low"], out["loss_high"] = pred["low"].to_numpy(), pred["high"].to_numpy()
    nopt = [n_opt_rows.get(i) or ch.n_opt(C[i], None if U is None else U[i]) for i in range(n)]
    out["n_opt"] = [e.value for e in nopt]
    out["n_opt_low"] = [e.low for e in nopt]
    out["n_opt_high"] = [e.high for e in nopt]
    for k in ch.families:
        out[f"loss_{k}"] = pred[f"loss_{k}"].to_numpy()
    out["disagree"] = pred["disagree"].to_numpy()
    out["family_spread_pct"] = pred["family_spread_pct"].to_numpy()
    out["extrapolation"] = C / ch.max_compute
    out["params_from"] = np.where(from_opt, "n_opt", "planned")
    out.attrs.update({"warnings": list(ch.warnings) + _planned_warnings(ch, out, pred), "weights": dict(ch.weights),
                      "chosen": ch.chosen, "interval": INTERVAL_COVERS[ch.interval_noise],
                      "validation_orders": dict(ch.orders),
                      "level": ch.level})
    return out


def _planned_warnings(ch: FamilyChoice, out: pd.DataFrame, pred: pd.DataFrame) -> list[str]:
    warns = []
    heavy = [k for k in ch.families if ch.weights.get(k, 0) >= MIN_WEIGHT]
    rows = np.flatnonzero(out["disagree"].to_numpy())
    if rows.size:
        i = int(rows[np.argmax(out["compute"].to_numpy()[rows])])
        txt = ", ".join(f"{k} {pred.at[i, f'loss_{k}']:.4g} "
                        f"[{pred.at[i, f'low_{k}']:.4g}, {pred.at[i, f'high_{k}']:.4g}]" for k in heavy)
        warns.append(
            f"the laws disagree beyond their own intervals at {rows.size} of {len(out)} planned run(s); at the "
            f"costliest of them (row {i}: N={out.at[i, 'params']:.3g}, D={out.at[i, 'tokens']:.3g}) {txt}. These runs "
            "do not settle which law holds at that scale: the reported interval "
            f"[{out.at[i, 'loss_low']:.4g}, {out.at[i, 'loss_high']:.4g}] spans the laws; before committing the "
            "compute, add a run nearer the target (a tenth of its compute) and refit, or plan for the worse prediction")
    far = out["extrapolation"].to_numpy()
    if np.isfinite(ch.validated_ratio) and (far > FAR_FACTOR * ch.validated_ratio).any():
        warns.append(
            f"planned run(s) need up to {far.max():.3g}x the compute of the largest fitted run, but the validation "
            f"only tested extrapolations up to {ch.validated_ratio:.3g}x: the family weights are evidence about "
            "shorter extrapolations, so treat the interval as a lower bound on the uncertainty there")
    elif not np.isfinite(ch.validated_ratio) and (far > FAR_FACTOR).any():
        warns.append(f"planned run(s) need up to {far.max():.3g}x the compute of the largest fitted run and the laws "
                     "were not validated on held-out costlier runs: the interval does not include how wrong the law "
                     "may be at that scale")
    return warns


__all__ = ["DEFAULT_CUTS", "FamilyChoice", "MixtureEstimate", "ORDERS", "RULES", "as_choice", "choose",
           "family_weights", "pick", "fit_families", "planned_sizes", "predict_planned", "rolling_origin",
           "run_weights", "scores", "validation_orders", "weighted_quantiles"]
