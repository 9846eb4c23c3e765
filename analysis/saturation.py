"""Where does a downstream task stop gaining from scale?

Model: m(x) = m_inf - k x^-gamma for a higher-is-better metric (m_inf + k x^-gamma for lower-is-better), with x
the model size N (or pretraining compute C). It is the loss laws' form turned upside down: it approaches a
ceiling m_inf as a power law, is monotone, and makes the gain from a doubling closed-form:

    gain(x) = k x^-gamma (1 - 2^-gamma),    x_sat = (k (1 - 2^-gamma) / threshold)^(1/gamma),

the size beyond which doubling gains less than `threshold` (e.g. 0.005 AUROC). A logistic in log N was the
alternative; it also saturates but needs a fourth parameter (the floor) that small sweeps cannot determine.

Downstream sweeps have few sizes (often 4 to 8), so resampling points would leave too few to fit. Intervals
come from a parametric bootstrap: each point is redrawn from a normal with the standard error its reported
interval implies (low/high, e.g. from a test-set bootstrap), or the fit's residual error where none is given.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from statistics import NormalDist

from .bootstrap import DEFAULT_LEVEL, Estimate, estimate
from .errors import AnalysisError
from .inputs import require_columns

PARAMS = ("m_inf", "k", "gamma")
GAMMA_BOUNDS = (1e-3, 3.0)
LOWER_IS_BETTER = {"brier", "loss", "log_loss", "nll", "ece", "mse", "rmse", "mae"}
SIZE_DEPENDENT = ("probe", "finetune", "scratch", "zero_shot")
PRETRAINED = ("probe", "finetune")


def higher_is_better(metric: str) -> bool:
    return metric.lower() not in LOWER_IS_BETTER


def _profile(u: np.ndarray, Y: np.ndarray, sign: float, gammas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of Y (B, n) on m_inf - sign k exp(-gamma u) for each gamma in gammas (B, G) or (G,).

    For fixed gamma the model is linear in (m_inf, k), so each fit is closed form; k is held >= 0 (a curve
    that gets worse with size is fitted as flat). Returns (B, G, 2) coefficients [m_inf, k] and (B, G) SSE.
    """
    gam = np.broadcast_to(gammas, (Y.shape[0], np.shape(gammas)[-1]))
    Z = np.exp(-gam[..., None] * u)  # (B, G, n)
    zm = Z.mean(axis=-1)
    Zc = Z - zm[..., None]
    szz = (Zc * Zc).sum(axis=-1)
    ym = Y.mean(axis=-1)
    Yc = Y - ym[:, None]
    szy = np.einsum("bgn,bn->bg", Zc, Yc)
    slope = np.where(szz > 0, szy / np.where(szz > 0, szz, 1), 0.0)
    k = np.maximum(-sign * slope, 0.0)
    b = -sign * k
    sse = (Yc * Yc).sum(axis=-1)[:, None] - 2 * b * szy + b * b * szz
    return np.stack([ym[:, None] - b * zm, k], axis=-1), sse


def _fit_many(x: np.ndarray, Y: np.ndarray, sign: float, xbar: float) -> np.ndarray:
    """(B, 3) [m_inf, k, gamma] for each row of Y: a global log-spaced grid over gamma, then a finer one
    around each row's best value (profile least squares, so no local minima in the linear parameters)."""
    u = np.log(x) - xbar
    grid = np.geomspace(*GAMMA_BOUNDS, 241)
    coef, sse = _profile(u, Y, sign, grid)
    i = np.argmin(sse, axis=1)
    lo = grid[np.maximum(i - 1, 0)]
    hi = grid[np.minimum(i + 1, grid.size - 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), 41).T)  # (B, 41)
    coef, sse = _profile(u, Y, sign, fine)
    j = np.argmin(sse, axis=1)
    r = np.arange(Y.shape[0])
    return np.column_stack([coef[r, j, 0], coef[r, j, 1], fine[r, j]]), sse[r, j]


class SaturationFit:
    """m(x) = m_inf - sign k (x/x0)^-gamma. `fit(x, y, se=None)`, `predict(x)`, `saturation_`, `estimates_`.

    x0 is the geometric mean of the sizes (k is reported at x0 = 1, i.e. in the formula of the module doc).
    """

    def __init__(self, *, threshold: float = 0.005, higher_is_better: bool = True, n_boot: int = 200,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        if threshold <= 0:
            raise AnalysisError(f"threshold must be positive; got {threshold}")
        self.threshold = threshold
        self.sign = 1.0 if higher_is_better else -1.0
        self.n_boot = n_boot
        self.level = level
        self.seed = seed

    def fit(self, x, y, se=None) -> "SaturationFit":
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        x, y = x[ok], y[ok]
        se = None if se is None else np.asarray(se, dtype=float)[ok]
        if np.unique(x).size < len(PARAMS) + 1:
            raise AnalysisError(
                f"a saturation curve (3 parameters) needs at least 4 distinct sizes; got {np.unique(x).size}"
            )
        self.xbar_ = float(np.log(x).mean())
        coef, sse = _fit_many(x, y[None], self.sign, self.xbar_)
        p = coef[0]
        self.coef_ = p
        self.data_ = pd.DataFrame({"x": x, "y": y})
        self.warnings_: list[str] = []
        rmse = float(np.sqrt(sse[0] / max(1, x.size - len(PARAMS))))
        if se is None or not np.all(np.isfinite(se)) or np.all(se <= 0):
            se = np.full(x.size, rmse)
            self.noise_ = "residual error of the fit"
        else:
            self.noise_ = "the points' reported intervals"
        rng = np.random.default_rng(self.seed)
        Y = self._curve(p, x)[None] + rng.normal(0, 1, (self.n_boot, x.size)) * se
        draws = _fit_many(x, Y, self.sign, self.xbar_)[0] if self.n_boot else np.empty((0, 3))
        self.boot_coef_ = draws
        self.params_ = {k: float(v[0]) for k, v in self._named(p[None]).items()}
        named = self._named(draws) if len(draws) else None
        self.estimates_: dict[str, Estimate] = {
            k: estimate(self.params_[k], None if named is None else named[k], self.level) for k in PARAMS
        }
        self.saturation_ = estimate(
            float(self._x_sat(p[None])[0]), self._x_sat(draws) if len(draws) else None, self.level
        )
        self.beyond_range_ = bool(self.saturation_.value > x.max())
        self.below_range_ = bool(self.saturation_.value < x.min())
        if p[2] <= GAMMA_BOUNDS[0] * 1.01:
            self.warnings_.append("gamma is at its lower bound: the curve is close to a straight line in log size")
        if self.beyond_range_:
            self.warnings_.append(
                f"saturation size {self.saturation_.value:.3g} is beyond the largest size trained ({x.max():.3g}): "
                "an extrapolation"
            )
        if self.below_range_:
            self.warnings_.append(
                f"already saturated at the smallest size trained ({x.min():.3g}): doublings gain less than "
                f"{self.threshold:g} throughout"
            )
        return self

    def _named(self, coef):
        return {"m_inf": coef[:, 0], "k": coef[:, 1] * np.exp(coef[:, 2] * self.xbar_), "gamma": coef[:, 2]}

    def _curve(self, p, x):
        return p[0] - self.sign * p[1] * np.exp(-p[2] * (np.log(x) - self.xbar_))

    def _x_sat(self, coef) -> np.ndarray:
        k, g = coef[:, 1], coef[:, 2]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf = never saturates
            return np.exp(self.xbar_ + (np.log(k) + np.log1p(-(2.0 ** -g)) - np.log(self.threshold)) / g)

    def predict(self, x) -> np.ndarray:
        return self._curve(self.coef_, np.asarray(x, dtype=float))

    def predict_draws(self, x) -> np.ndarray:
        u = np.log(np.atleast_1d(np.asarray(x, dtype=float)))[None] - self.xbar_
        c = self.boot_coef_
        return c[:, [0]] - self.sign * c[:, [1]] * np.exp(-c[:, [2]] * u)

    def gain_per_doubling(self, x) -> np.ndarray:
        return np.abs(self.predict(2 * np.asarray(x, dtype=float)) - self.predict(x))


class SaturationResult:
    """Per (task, mode) saturation fits, the size-independent baselines, and a ranking of tasks."""

    def __init__(self, fits: dict, baselines: pd.DataFrame, points: pd.DataFrame, *, x: str, metric: str,
                 threshold: float, primary: tuple, skipped: list[str]):
        self.fits = fits
        self.baselines = baselines
        self.points = points
        self.x = x
        self.metric = metric
        self.threshold = threshold
        self.primary = primary
        self.warnings = skipped + [f"{t}/{m}: {w}" for (t, m), f in fits.items() for w in f.warnings_]

    @property
    def tasks(self) -> list[str]:
        return sorted(self.points["task"].unique())

    def ranking(self) -> pd.DataFrame:
        """Tasks ordered by the size at which their pretrained curve saturates (smallest first)."""
        rows = []
        for task in self.tasks:
            mode = next((m for m in self.primary if (task, m) in self.fits), None)
            if mode is None:
                continue
            f = self.fits[(task, mode)]
            s = f.saturation_
            rows.append({"task": task, "mode": mode, "saturation": s.value, "low": s.low, "high": s.high,
                         "below_range": f.below_range_, "beyond_range": f.beyond_range_, "m_inf": f.params_["m_inf"],
                         "gamma": f.params_["gamma"]})
        cols = ["task", "mode", "saturation", "low", "high", "below_range", "beyond_range", "m_inf", "gamma"]
        return pd.DataFrame(rows, columns=cols).sort_values("saturation", kind="stable").reset_index(drop=True)

    def to_dict(self) -> dict:
        return {
            "x": self.x,
            "metric": self.metric,
            "threshold": self.threshold,
            "ranking": [
                {k: (bool(v) if isinstance(v, (bool, np.bool_)) else (float(v) if isinstance(v, float) and
                     np.isfinite(v) else (None if isinstance(v, float) else v))) for k, v in r.items()}
                for r in self.ranking().to_dict(orient="records")
            ],
            "warnings": list(self.warnings),
        }


def fit_saturation(
    downstream: pd.DataFrame,
    *,
    metric: str = "auroc",
    x: str = "params",
    threshold: float = 0.005,
    primary: tuple = PRETRAINED,
    n_boot: int = 200,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> SaturationResult:
    """Fit saturation curves per task for every size-dependent mode with at least 4 sizes.

    Rows with no `x` (or whose x spans less than a doubling) are size-independent baselines (LightGBM, ceiling, ...).
    Tasks are ranked by the first mode of `primary` they have.
    """
    require_columns(downstream, ["task", "mode", "metric", "value", x])
    d = downstream[downstream["metric"] == metric].copy()
    if d.empty:
        raise AnalysisError(
            f"no rows with metric {metric!r}; metrics present: {', '.join(map(str, downstream['metric'].unique()))}"
        )
    d[x] = pd.to_numeric(d[x], errors="coerce")
    has_x = np.isfinite(d[x]) & (d[x] > 0)
    # a curve needs sizes at least a doubling apart: runs at one IsoFLOP budget share (almost) one compute
    span = d[has_x].groupby(["task", "mode"])[x].agg(lambda v: v.max() / v.min())
    sized = d[has_x & d.set_index(["task", "mode"]).index.isin(span[span >= 2.0].index)]
    baselines = d.drop(sized.index)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    fits, skipped = {}, []
    hib = higher_is_better(metric)
    for (task, mode), g in sized.groupby(["task", "mode"]):
        g = g.groupby(x, as_index=False).agg({"value": "mean", **({"low": "mean", "high": "mean"}
                                                                  if {"low", "high"} <= set(g) else {})})
        se = (g["high"] - g["low"]) / (2 * z) if {"low", "high"} <= set(g) else None
        try:
            fits[(task, mode)] = SaturationFit(threshold=threshold, higher_is_better=hib, n_boot=n_boot,
                                               level=level, seed=seed).fit(g[x], g["value"], se)
        except AnalysisError as e:
            skipped.append(f"{task}/{mode}: not fitted ({e})")
    return SaturationResult(fits, baselines, sized, x=x, metric=metric, threshold=threshold,
                            primary=tuple(primary), skipped=skipped)
