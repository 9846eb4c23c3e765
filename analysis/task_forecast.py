"""Two-step downstream forecast: pretraining loss -> task metric (the OLMo ladder, Bhagia et al. 2024; Llama 3).

Step 1 is the loss law: the pretraining loss a model of N parameters trained on D tokens reaches (Approach 3,
L(N, D) = E + A/N^alpha + B/D^beta, analysis/parametric.py). Step 2, per task, maps that loss to the task metric
with a bounded sigmoid, since every run's loss is one number that already summarises its size and its training:

    m(L) = floor + (top - floor) / (1 + exp(s (L - L0))),    s > 0,  floor <= top <= ceiling,

floor the metric's chance level (AUROC 0.5), top the level a model of zero excess loss would reach, bounded by
the metric's range and, where known, by the task's ceiling (the true probability's metric), L0 the loss at
the midpoint and s its steepness. For fixed (s, L0) the model is linear in top, so each fit is a closed-form
least squares on a grid of (s, L0) scaled to the losses seen, refined around the best cell.

Intervals: each paired bootstrap draw of the task metrics (the same resampled test subjects for every run; see
analysis/paired.py) is refitted, or, without draws, each point is redrawn from its interval; a forecast then
pairs draw b of step 2 with draw b of the predicted loss (step 1), so both uncertainties enter.

Validation (`holdout_largest`): the largest model of the sweep is left out of step 2 (and of step 1, by the
caller fitting the loss law without it), and its metric is forecast from its predicted loss, against what it
measured.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_LEVEL, Estimate, estimate
from .errors import AnalysisError
from .saturation import METRIC_RANGE, higher_is_better, m_inf_bounds

N_S, N_L0, N_FINE = 41, 61, 11


def _sigmoid_fit(L: np.ndarray, Y: np.ndarray, floor: float, top_max: float, s_grid, l0_grid):
    """Best (top, s, L0) per row of Y (B, n) over grids s_grid (B, Gs) and l0_grid (B, Gl)."""
    B = Y.shape[0]
    s = s_grid[:, :, None, None]                                     # (B, Gs, 1, 1)
    l0 = l0_grid[:, None, :, None]                                   # (B, 1, Gl, 1)
    with np.errstate(over="ignore"):
        g = 1.0 / (1.0 + np.exp(np.clip(s * (L[None, None, None, :] - l0), -60, 60)))  # (B, Gs, Gl, n)
    r = (Y - floor)[:, None, None, :]
    gg = (g * g).sum(-1)
    amp = np.clip(np.where(gg > 0, (g * r).sum(-1) / np.where(gg > 0, gg, 1), 0.0), 0.0, top_max - floor)
    sse = ((r - amp[..., None] * g) ** 2).sum(-1).reshape(B, -1)
    j = np.argmin(sse, axis=1)
    i_s, i_l = np.unravel_index(j, (s_grid.shape[1], l0_grid.shape[1]))
    rows = np.arange(B)
    return (floor + amp.reshape(B, -1)[rows, j], s_grid[rows, i_s], l0_grid[rows, i_l], i_s, i_l,
            sse[rows, j])


class LossToMetricFit:
    """m(L) = floor + (top - floor) sigmoid(s (L0 - L)). `fit(loss, y, se=None, draws=None)`, `predict`,
    `predict_draws`, `forecast(loss_value, loss_draws=None)`, `estimates_` (top, s, L0)."""

    def __init__(self, *, metric: str = "auroc", ceiling: float | None = None, n_boot: int = 200,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        if not higher_is_better(metric):
            raise AnalysisError(f"the loss-to-metric forecast is for metrics where higher is better; got {metric!r}")
        self.metric = metric
        self.floor = float(METRIC_RANGE.get(metric.lower(), (0.0, 1.0))[0])
        self.top_max = m_inf_bounds(metric, ceiling)[1]
        if not np.isfinite(self.top_max):
            raise AnalysisError(f"metric {metric!r} has no upper bound: a bounded sigmoid needs one")
        self.n_boot, self.level, self.seed = n_boot, level, seed

    def _fit_rows(self, L, Y):
        span = max(float(L.max() - L.min()), 1e-3)
        B = Y.shape[0]
        s_grid = np.broadcast_to(np.geomspace(0.05, 60, N_S) / span, (B, N_S))
        l0_grid = np.broadcast_to(np.linspace(L.min() - 3 * span, L.max() + 3 * span, N_L0), (B, N_L0))
        _, _, _, i_s, i_l, _ = _sigmoid_fit(L, Y, self.floor, self.top_max, s_grid, l0_grid)
        # refine: a finer grid spanning the neighbouring cells of each row's best
        ls = np.log(s_grid[0])
        s_fine = np.exp(np.linspace(ls[np.maximum(i_s - 1, 0)], ls[np.minimum(i_s + 1, N_S - 1)], N_FINE).T)
        l0 = l0_grid[0]
        l0_fine = np.linspace(l0[np.maximum(i_l - 1, 0)], l0[np.minimum(i_l + 1, N_L0 - 1)], N_FINE).T
        top, s, l0b, _, _, sse = _sigmoid_fit(L, Y, self.floor, self.top_max, s_fine, l0_fine)
        return np.column_stack([top, s, l0b]), sse

    def fit(self, loss, y, se=None, draws=None) -> "LossToMetricFit":
        L, y = np.asarray(loss, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(L) & np.isfinite(y)
        if ok.sum() < 3:
            raise AnalysisError(f"a loss-to-metric curve needs at least 3 runs with a loss and a metric; got {ok.sum()}")
        L, y = L[ok], y[ok]
        coef, sse = self._fit_rows(L, y[None])
        self.coef_ = coef[0]
        self.data_ = pd.DataFrame({"loss": L, "value": y})
        if draws is not None:
            draws = np.asarray(draws, dtype=float)[:, ok]
            draws = draws[np.all(np.isfinite(draws), axis=1)][: self.n_boot]
        if draws is not None and len(draws) >= 10:
            Y = draws
            self.noise_ = "paired subject bootstrap"
        else:
            rmse = float(np.sqrt(sse[0] / max(1, L.size - 3)))
            se = np.full(L.size, rmse) if se is None else np.asarray(se, dtype=float)[ok]
            se = np.where(np.isfinite(se) & (se > 0), se, rmse)
            rng = np.random.default_rng(self.seed)
            Y = self.predict(L)[None] + rng.normal(0, 1, (self.n_boot, L.size)) * se
            self.noise_ = "the points' intervals, independent"
        self.boot_coef_ = self._fit_rows(L, Y)[0] if len(Y) else np.empty((0, 3))
        names = ("top", "s", "L0")
        self.params_ = dict(zip(names, map(float, self.coef_)))
        self.estimates_ = {n: estimate(self.params_[n], self.boot_coef_[:, i] if len(self.boot_coef_) else None,
                                       self.level) for i, n in enumerate(names)}
        return self

    def _curve(self, c, L):
        with np.errstate(over="ignore"):
            return self.floor + (c[..., 0:1] - self.floor) / (1 + np.exp(np.clip(c[..., 1:2] * (L - c[..., 2:3]), -60, 60)))

    def predict(self, loss) -> np.ndarray:
        return self._curve(self.coef_[None], np.atleast_1d(np.asarray(loss, dtype=float))[None])[0]

    def predict_draws(self, loss) -> np.ndarray:
        """(B, n): the metric at each loss under each bootstrap draw of the curve."""
        return self._curve(self.boot_coef_, np.atleast_1d(np.asarray(loss, dtype=float))[None])

    def forecast(self, loss: float, loss_draws=None) -> Estimate:
        """The metric at a predicted loss; draw b of the curve at draw b of the loss (cycled) when given."""
        value = float(self.predict(loss)[0])
        if not len(self.boot_coef_):
            return Estimate(value)
        if loss_draws is None or len(loss_draws) == 0:
            return estimate(value, self.predict_draws(loss)[:, 0], self.level)
        ld = np.asarray(loss_draws, dtype=float).ravel()
        ld = np.resize(ld[np.isfinite(ld)], len(self.boot_coef_))
        draws = self._curve(self.boot_coef_, ld[:, None])[:, 0]
        return estimate(value, draws, self.level)


def normal_draws(e: Estimate, n: int, seed: int = 0, level: float = DEFAULT_LEVEL) -> np.ndarray | None:
    """Draws matching an estimate's interval (normal): for a loss known only as value [low, high]."""
    if not np.isfinite(e.low) or not np.isfinite(e.high):
        return None
    sd = (e.high - e.low) / (2 * NormalDist().inv_cdf(0.5 + level / 2))
    return np.random.default_rng(seed).normal(e.value, sd, n)


def holdout_largest(points: pd.DataFrame, *, metric: str, predicted_loss: float | None = None,
                    predicted_loss_draws=None, ceiling: float | None = None, matrix: np.ndarray | None = None,
                    n_boot: int = 200, seed: int = 0) -> dict:
    """Leave out the largest model (by params) of `points` (one task and mode: params, loss, value, low, high),
    fit step 2 on the rest, and forecast the left-out one from `predicted_loss` (step 1 without it) and, for
    reference, from its observed loss. `matrix`: paired draws (B, len(points)) in the order of `points`."""
    p = points.reset_index(drop=True)
    i = int(np.argmax(p["params"].to_numpy(dtype=float)))
    rest = np.arange(len(p)) != i
    z = NormalDist().inv_cdf(0.5 + DEFAULT_LEVEL / 2)
    se = ((p["high"] - p["low"]) / (2 * z)).to_numpy() if {"low", "high"} <= set(p) else None
    fit = LossToMetricFit(metric=metric, ceiling=ceiling, n_boot=n_boot, seed=seed).fit(
        p["loss"][rest], p["value"][rest], None if se is None else se[rest],
        draws=None if matrix is None else matrix[:, rest])
    held = p.iloc[i]
    two_step = predicted_loss is not None and np.isfinite(predicted_loss)
    f = fit.forecast(float(predicted_loss), predicted_loss_draws) if two_step else fit.forecast(float(held["loss"]))
    from_observed = fit.forecast(float(held["loss"]))
    return {"run_id": held.get("run_id"), "params": float(held["params"]), "actual": float(held["value"]),
            "actual_low": float(held.get("low", np.nan)), "actual_high": float(held.get("high", np.nan)),
            "loss": float(held["loss"]), "predicted_loss": float(predicted_loss) if two_step else np.nan,
            "forecast": f.value, "low": f.low, "high": f.high, "from_observed_loss": from_observed.value,
            "two_step": bool(two_step), "error": f.value - float(held["value"]),
            "within": bool(f.low <= float(held["value"]) <= f.high) if np.isfinite(f.low) else None}


def task_forecasts(downstream: pd.DataFrame, losses: pd.DataFrame, *, metric: str = "auroc",
                   modes: tuple = ("probe", "finetune"), draws: pd.DataFrame | None = None,
                   at_loss: Estimate | None = None, at_loss_draws=None, holdout_loss: dict | None = None,
                   n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per (task, mode): step 2 fitted on every size (one run per size, saturation.one_run_per_size), the
    forecast at `at_loss` (step 1's loss for the recommended model, with its draws), and the validation on the
    largest model (`holdout_loss`: {"value": predicted loss of that run by a law fitted without it, "draws":
    ..., "run_id": ...}; without it the held-out run's observed loss is used and the row says so)."""
    from .paired import draw_matrix
    from .saturation import _ceiling_of, one_run_per_size

    d = downstream[(downstream["metric"] == metric) & downstream["mode"].isin(modes)]
    d = d.merge(losses[["run_id", "loss"]], on="run_id", how="inner")
    d = d[np.isfinite(pd.to_numeric(d["params"], errors="coerce")) & np.isfinite(d["loss"])]
    base = downstream[(downstream["metric"] == metric) & (downstream["mode"] == "ceiling")]
    if draws is not None and len(draws):
        draws = draws[draws["metric"] == metric]
    rows = []
    for (task, mode), g in d.groupby(["task", "mode"]):
        g = one_run_per_size(g, "params").sort_values("params").reset_index(drop=True)
        row = {"task": task, "mode": mode, "n_runs": len(g)}
        if len(g) < 4:
            rows.append({**row, "note": f"{len(g)} sizes: needs 4 (3 to fit and 1 to hold out)"})
            continue
        ceiling = _ceiling_of(g, base, task)
        mat = None
        if draws is not None:
            mat = draw_matrix(draws[(draws["task"] == task) & (draws["mode"] == mode)], list(g["run_id"]), seed=seed)
        z = NormalDist().inv_cdf(0.5 + DEFAULT_LEVEL / 2)
        se = ((g["high"] - g["low"]) / (2 * z)).to_numpy() if {"low", "high"} <= set(g) else None
        try:
            fit = LossToMetricFit(metric=metric, ceiling=ceiling, n_boot=n_boot, seed=seed).fit(
                g["loss"], g["value"], se, draws=mat)
        except AnalysisError as e:
            rows.append({**row, "note": str(e)})
            continue
        row.update({"top": fit.params_["top"], "top_low": fit.estimates_["top"].low,
                    "top_high": fit.estimates_["top"].high, "noise": fit.noise_, "note": ""})
        if at_loss is not None and np.isfinite(at_loss.value):
            f = fit.forecast(at_loss.value, at_loss_draws)
            row.update({"at_loss": at_loss.value, "forecast": f.value, "forecast_low": f.low, "forecast_high": f.high})
        largest = g.iloc[int(np.argmax(g["params"].to_numpy(dtype=float)))]
        hl = holdout_loss if holdout_loss and holdout_loss.get("run_id") == largest["run_id"] else None
        h = holdout_largest(g, metric=metric, ceiling=ceiling, matrix=mat, n_boot=n_boot, seed=seed,
                            predicted_loss=None if hl is None else hl["value"],
                            predicted_loss_draws=None if hl is None else hl.get("draws"))
        row.update({f"holdout_{k}": v for k, v in h.items() if k != "run_id"})
        rows.append(row)
    return pd.DataFrame(rows)


def loss_law_without(runs: pd.DataFrame, run_id, *, n_boot: int = 50, seed: int = 0) -> dict | None:
    """Step 1 for the validation: L(N, D) (Approach 3) fitted to the finished runs except `run_id`, and its
    prediction (with draws) for that run's N and D; None when the remaining runs cannot support the fit."""
    from .parametric import ParametricFit

    rest = runs[runs["run_id"] != run_id]
    held = runs[runs["run_id"] == run_id]
    if held.empty:
        return None
    try:
        budget = rest["budget"].to_numpy() if "budget" in rest and rest["budget"].notna().any() else None
        fit = ParametricFit(n_boot=n_boot, seed=seed).fit(rest["params"], rest["tokens"], rest["loss"], budget=budget)
    except AnalysisError:
        return None
    N, D = float(held["params"].iloc[0]), float(held["tokens"].iloc[0])
    draws = fit.predict_draws(N, D)[:, 0] if len(fit.boot_thetas_) else None
    return {"run_id": run_id, "value": float(fit.predict(N, D)), "draws": draws}
