"""Where does a downstream task stop gaining from scale?

Model: m(x) = m_inf - k x^-gamma for a higher-is-better metric (m_inf + k x^-gamma for lower-is-better), with x
the model size N (or pretraining compute C). It approaches a ceiling m_inf as a power law, is monotone, and
makes the gain from a doubling closed-form:

    gain(x) = k x^-gamma (1 - 2^-gamma),    x_sat = (k (1 - 2^-gamma) / threshold)^(1/gamma),

the size beyond which doubling gains less than `threshold` (e.g. 0.005 AUROC).

Bounded: m_inf is constrained to the metric's range (AUROC in [0.5, 1]: chance to perfect) and, where the best
achievable value is known (the simulator's `ceiling`: the true probability's metric on the same test rows), to
the side of it a model cannot pass (m_inf <= ceiling for AUROC, >= ceiling for Brier). For a fixed gamma the
model is linear in (m_inf, k), so each fit is a two-variable least squares over a box (m_inf in bounds, k >= 0),
solved exactly by checking the interior and each face; gamma is profiled over a log grid. A curve still rising
linearly in log N then meets the bound instead of flying off to m_inf = 13.7, and its saturation size is finite.

Verdict per curve: "flat" when a doubling gains less than `threshold` already at the smallest size trained
(x_sat < smallest), "still gaining" when x_sat lies beyond the largest size trained, else "saturates" at x_sat;
with the share of bootstrap draws in each case (a draw that never saturates has x_sat = inf, and counts as still
gaining; bootstrap.interval keeps infinite bounds infinite).

Intervals: with paired draws (analysis/paired.py: every size scored on the same resampled test subjects, seeds
resampled), each draw of the whole curve is refitted, so the sizes' shared test-set noise moves the curve as a
whole instead of being counted as independent noise per size. Without draws, a parametric bootstrap redraws
each point from a normal with the standard error its interval implies (or the fit's residual error).

One run per size: when several runs share a size (an IsoFLOP sweep trains each size at several budgets), the
longest-trained one (largest pretraining compute) represents it, so the curve against N holds training fixed at
"as much as this sweep gave that size" rather than averaging different amounts of training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from statistics import NormalDist

from .bootstrap import DEFAULT_LEVEL, Estimate, estimate, exceedance
from .errors import AnalysisError
from .inputs import require_columns
from .paired import draw_matrix, paired_differences

PARAMS = ("m_inf", "k", "gamma")
GAMMA_BOUNDS = (1e-3, 3.0)
LOWER_IS_BETTER = {"brier", "loss", "log_loss", "nll", "ece", "mse", "rmse", "mae"}
# the range of each metric's asymptote (AUROC's floor is chance: a model's limit below it is not a limit)
METRIC_RANGE = {"auroc": (0.5, 1.0), "auprc": (0.0, 1.0), "brier": (0.0, 1.0), "ece": (0.0, 1.0),
                "mae": (0.0, np.inf), "rmse": (0.0, np.inf), "mse": (0.0, np.inf), "loss": (0.0, np.inf)}
SIZE_DEPENDENT = ("probe", "finetune", "scratch", "zero_shot")
PRETRAINED = ("probe", "finetune")
PER_SIZE_RULE = "the longest-trained run of each size (largest pretraining compute)"


def higher_is_better(metric: str) -> bool:
    return metric.lower() not in LOWER_IS_BETTER


def m_inf_bounds(metric: str, ceiling: float | None = None) -> tuple[float, float]:
    """[low, high] for m_inf: the metric's range, narrowed by the best achievable value where it is known."""
    lo, hi = METRIC_RANGE.get(metric.lower(), (-np.inf, np.inf))
    if ceiling is not None and np.isfinite(ceiling):
        if higher_is_better(metric):
            hi = min(hi, float(ceiling))
        else:
            lo = max(lo, float(ceiling))
    if hi < lo:  # a ceiling outside the range (a noisy estimate): keep the range
        lo, hi = METRIC_RANGE.get(metric.lower(), (-np.inf, np.inf))
    return float(lo), float(hi)


def _profile(u: np.ndarray, Y: np.ndarray, sign: float, gammas: np.ndarray, lo: float, hi: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of Y (B, n) on m_inf - sign k exp(-gamma u) for each gamma in gammas (B, G) or (G,),
    with lo <= m_inf <= hi and k >= 0 (a curve that gets worse with size is fitted as flat).

    For fixed gamma the problem is a convex quadratic in (m_inf, slope) over a box, so its minimum is the
    unconstrained one when feasible, else on a face: slope 0 (m_inf = clipped mean), m_inf = lo or m_inf = hi
    (slope by least squares through that intercept, clipped to the allowed sign). Returns (B, G, 2)
    coefficients [m_inf, k] and (B, G) SSE."""
    gam = np.broadcast_to(gammas, (Y.shape[0], np.shape(gammas)[-1]))
    Z = np.exp(-gam[..., None] * u)  # (B, G, n)
    Yb = Y[:, None, :]
    zm = Z.mean(axis=-1)
    Zc = Z - zm[..., None]
    szz = (Zc * Zc).sum(axis=-1)
    ym = Y.mean(axis=-1)[:, None]
    szy = (Zc * (Yb - ym[..., None])).sum(axis=-1)

    def allowed(b):  # slope b = -sign k with k >= 0
        return -sign * np.maximum(-sign * b, 0.0)

    with np.errstate(divide="ignore", invalid="ignore"):
        b_ols = np.where(szz > 0, szy / np.where(szz > 0, szz, 1), 0.0)
        m_ols = ym - b_ols * zm
        ok_ols = (-sign * b_ols >= 0) & (m_ols >= lo) & (m_ols <= hi)
        z2 = (Z * Z).sum(axis=-1)
        cands = [(m_ols, b_ols, ok_ols), (np.broadcast_to(np.clip(ym, lo, hi), zm.shape), np.zeros_like(zm), True)]
        for edge in (lo, hi):
            if np.isfinite(edge):
                b = allowed((Z * (Yb - edge)).sum(axis=-1) / z2)
                cands.append((np.full_like(zm, edge), b, True))
    best_sse = np.full(zm.shape, np.inf)
    best_m, best_b = np.zeros_like(zm), np.zeros_like(zm)
    for m, b, ok in cands:
        r = Yb - m[..., None] - b[..., None] * Z
        sse = np.where(ok, (r * r).sum(axis=-1), np.inf)
        better = sse < best_sse
        best_sse = np.where(better, sse, best_sse)
        best_m = np.where(better, m, best_m)
        best_b = np.where(better, b, best_b)
    return np.stack([best_m, -sign * best_b], axis=-1), best_sse


def _fit_many(x: np.ndarray, Y: np.ndarray, sign: float, xbar: float, lo: float, hi: float):
    """(B, 3) [m_inf, k, gamma] for each row of Y: a global log-spaced grid over gamma, then a finer one
    around each row's best value (profile least squares, so no local minima in the linear parameters)."""
    u = np.log(x) - xbar
    grid = np.geomspace(*GAMMA_BOUNDS, 241)
    coef, sse = _profile(u, Y, sign, grid, lo, hi)
    i = np.argmin(sse, axis=1)
    g_lo = grid[np.maximum(i - 1, 0)]
    g_hi = grid[np.minimum(i + 1, grid.size - 1)]
    fine = np.exp(np.linspace(np.log(g_lo), np.log(g_hi), 41).T)  # (B, 41)
    coef, sse = _profile(u, Y, sign, fine, lo, hi)
    j = np.argmin(sse, axis=1)
    r = np.arange(Y.shape[0])
    return np.column_stack([coef[r, j, 0], coef[r, j, 1], fine[r, j]]), sse[r, j]


class SaturationFit:
    """m(x) = m_inf - sign k (x/x0)^-gamma with m_inf in `bounds`. `fit(x, y, se=None, draws=None)`,
    `predict(x)`, `saturation_`, `status_`, `p_gaining_`, `estimates_`.

    x0 is the geometric mean of the sizes (k is reported at x0 = 1, i.e. in the formula of the module doc).
    """

    def __init__(self, *, threshold: float = 0.005, higher_is_better: bool = True, n_boot: int = 200,
                 level: float = DEFAULT_LEVEL, seed: int = 0, bounds: tuple[float, float] = (-np.inf, np.inf)):
        if threshold <= 0:
            raise AnalysisError(f"threshold must be positive; got {threshold}")
        if not bounds[0] <= bounds[1]:
            raise AnalysisError(f"m_inf bounds must be ordered (low <= high); got {bounds}")
        self.threshold = threshold
        self.sign = 1.0 if higher_is_better else -1.0
        self.n_boot = n_boot
        self.level = level
        self.seed = seed
        self.bounds = (float(bounds[0]), float(bounds[1]))

    def fit(self, x, y, se=None, draws=None) -> "SaturationFit":
        """draws: (B, n) paired bootstrap draws of y (one row per resampled test set), which then give the
        intervals; otherwise a parametric bootstrap from `se` (or the residual error)."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        x, y = x[ok], y[ok]
        se = None if se is None else np.asarray(se, dtype=float)[ok]
        if draws is not None:
            draws = np.asarray(draws, dtype=float)[:, ok]
            draws = draws[np.all(np.isfinite(draws), axis=1)]
        if np.unique(x).size < len(PARAMS) + 1:
            raise AnalysisError(
                f"a saturation curve (3 parameters) needs at least 4 distinct sizes; got {np.unique(x).size}"
            )
        lo, hi = self.bounds
        self.xbar_ = float(np.log(x).mean())
        coef, sse = _fit_many(x, y[None], self.sign, self.xbar_, lo, hi)
        p = coef[0]
        self.coef_ = p
        self.data_ = pd.DataFrame({"x": x, "y": y})
        self.warnings_: list[str] = []
        rmse = float(np.sqrt(sse[0] / max(1, x.size - len(PARAMS))))
        if draws is not None and len(draws) >= 10:
            Y = draws[: self.n_boot] if self.n_boot else draws[:0]
            self.noise_ = "paired subject bootstrap (the same resampled test subjects for every size)"
        else:
            if se is None or not np.all(np.isfinite(se)) or np.all(se <= 0):
                se = np.full(x.size, rmse)
                self.noise_ = "residual error of the fit"
            else:
                self.noise_ = "the points' reported intervals, independent across sizes"
            rng = np.random.default_rng(self.seed)
            Y = self._curve(p, x)[None] + rng.normal(0, 1, (self.n_boot, x.size)) * se
        boot = _fit_many(x, Y, self.sign, self.xbar_, lo, hi)[0] if len(Y) else np.empty((0, 3))
        self.boot_coef_ = boot
        self.params_ = {k: float(v[0]) for k, v in self._named(p[None]).items()}
        named = self._named(boot) if len(boot) else None
        self.estimates_: dict[str, Estimate] = {
            k: estimate(self.params_[k], None if named is None else named[k], self.level) for k in PARAMS
        }
        sat_draws = self._x_sat(boot) if len(boot) else None
        self.saturation_ = estimate(float(self._x_sat(p[None])[0]), sat_draws, self.level)
        x_min, x_max = float(x.min()), float(x.max())
        gain_draws = self._gain(boot, x_max) if len(boot) else None
        self.gain_at_largest_ = estimate(float(self._gain(p[None], x_max)[0]), gain_draws, self.level)
        self.beyond_range_ = bool(self.saturation_.value > x_max)
        self.below_range_ = bool(self.saturation_.value < x_min)
        self.status_ = "still gaining" if self.beyond_range_ else ("flat" if self.below_range_ else "saturates")
        self.p_gaining_ = exceedance(sat_draws, x_max) if sat_draws is not None else float("nan")
        self.p_flat_ = float(np.mean(sat_draws < x_min)) if sat_draws is not None else float("nan")
        at_bound = np.isfinite(hi) and abs(p[0] - hi) < 1e-9 if self.sign > 0 else (np.isfinite(lo) and abs(p[0] - lo) < 1e-9)
        self.at_bound_ = bool(at_bound and p[1] > 0)
        if self.at_bound_:
            self.warnings_.append(
                f"m_inf is at its bound {p[0]:.3g} (the metric's limit or the known ceiling): the sizes trained do "
                "not show the curve bending, so the bound, not the data, sets where it levels off")
        if p[2] <= GAMMA_BOUNDS[0] * 1.01:
            self.warnings_.append("gamma is at its lower bound: the curve is close to a straight line in log size")
        if self.beyond_range_:
            self.warnings_.append(
                f"still gaining at the largest size trained ({x_max:.3g}; probability {self.p_gaining_:.2f}): the "
                f"saturation size {self.saturation_.value:.3g} is an extrapolation"
            )
        if self.below_range_:
            self.warnings_.append(
                f"flat: already saturated at the smallest size trained ({x_min:.3g}): doublings gain less than "
                f"{self.threshold:g} throughout"
            )
        return self

    def _named(self, coef):
        return {"m_inf": coef[:, 0], "k": coef[:, 1] * np.exp(coef[:, 2] * self.xbar_), "gamma": coef[:, 2]}

    def _curve(self, p, x):
        return p[0] - self.sign * p[1] * np.exp(-p[2] * (np.log(x) - self.xbar_))

    def _gain(self, coef, x) -> np.ndarray:
        u = np.log(x) - self.xbar_
        return coef[:, 1] * np.exp(-coef[:, 2] * u) * (1 - 2.0 ** -coef[:, 2])

    def _x_sat(self, coef) -> np.ndarray:
        k, g = coef[:, 1], coef[:, 2]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf = never saturates; 0 = flat
            x = np.exp(self.xbar_ + (np.log(k) + np.log1p(-(2.0 ** -g)) - np.log(self.threshold)) / g)
        return np.where(x < 1.0, 0.0, x)  # below one parameter: flat from the start (no denormal sizes)

    def predict(self, x) -> np.ndarray:
        return self._curve(self.coef_, np.asarray(x, dtype=float))

    def predict_draws(self, x) -> np.ndarray:
        u = np.log(np.atleast_1d(np.asarray(x, dtype=float)))[None] - self.xbar_
        c = self.boot_coef_
        return c[:, [0]] - self.sign * c[:, [1]] * np.exp(-c[:, [2]] * u)

    def gain_per_doubling(self, x) -> np.ndarray:
        return np.abs(self.predict(2 * np.asarray(x, dtype=float)) - self.predict(x))


def one_run_per_size(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Of the rows of one (task, mode) curve, the longest-trained run of each size (PER_SIZE_RULE)."""
    r = rows.copy()
    r["_c"] = pd.to_numeric(r["compute"], errors="coerce").fillna(-np.inf) if "compute" in r else 0.0
    sort = [x, "_c"] + (["run_id"] if "run_id" in r else [])
    r = r.sort_values(sort, ascending=[True, False] + [True] * (len(sort) - 2), kind="stable")
    return r.drop_duplicates(subset=[x], keep="first").drop(columns="_c")


class SaturationResult:
    """Per (task, mode) saturation fits, the size-independent baselines, and a ranking of tasks."""

    def __init__(self, fits: dict, baselines: pd.DataFrame, points: pd.DataFrame, *, x: str, metric: str,
                 threshold: float, primary: tuple, skipped: list[str], matrices: dict | None = None):
        self.fits = fits
        self.baselines = baselines
        self.points = points
        self.x = x
        self.metric = metric
        self.threshold = threshold
        self.primary = primary
        self.matrices = matrices or {}
        self.rule = PER_SIZE_RULE
        self.warnings = skipped + [f"{t}/{m}: {w}" for (t, m), f in fits.items() for w in f.warnings_]

    @property
    def tasks(self) -> list[str]:
        return sorted(self.points["task"].unique())

    def primary_mode(self, task: str) -> str | None:
        return next((m for m in self.primary if (task, m) in self.fits), None)

    def ranking(self) -> pd.DataFrame:
        """Tasks ordered by the size at which their pretrained curve saturates (smallest first)."""
        rows = []
        for task in self.tasks:
            mode = self.primary_mode(task)
            if mode is None:
                continue
            f = self.fits[(task, mode)]
            s = f.saturation_
            rows.append({"task": task, "mode": mode, "status": f.status_, "saturation": s.value, "low": s.low,
                         "high": s.high, "p_gaining": f.p_gaining_, "p_flat": f.p_flat_,
                         "gain_at_largest": f.gain_at_largest_.value, "below_range": f.below_range_,
                         "beyond_range": f.beyond_range_, "m_inf": f.params_["m_inf"],
                         "m_inf_low": f.estimates_["m_inf"].low, "m_inf_high": f.estimates_["m_inf"].high,
                         "bound": f.bounds[1] if f.sign > 0 else f.bounds[0], "gamma": f.params_["gamma"],
                         "noise": f.noise_})
        cols = ["task", "mode", "status", "saturation", "low", "high", "p_gaining", "p_flat", "gain_at_largest",
                "below_range", "beyond_range", "m_inf", "m_inf_low", "m_inf_high", "bound", "gamma", "noise"]
        return pd.DataFrame(rows, columns=cols).sort_values("saturation", kind="stable").reset_index(drop=True)

    def differences(self, task: str, mode: str) -> pd.DataFrame:
        """Paired differences between consecutive sizes of one curve (analysis/paired.py)."""
        g = self.points[(self.points["task"] == task) & (self.points["mode"] == mode)].sort_values(self.x)
        has = {"low", "high"} <= set(g.columns) and g[["low", "high"]].notna().all().all()
        return paired_differences([float(v) for v in g[self.x]], g["value"].to_numpy(),
                                  self.matrices.get((task, mode)), low=g["low"] if has else None,
                                  high=g["high"] if has else None, higher_is_better=higher_is_better(self.metric))

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, (bool, np.bool_)):
                return bool(v)
            if isinstance(v, (float, np.floating)):
                return float(v) if np.isfinite(v) else (("inf" if v > 0 else "-inf") if np.isinf(v) else None)
            return v

        return {
            "x": self.x,
            "metric": self.metric,
            "threshold": self.threshold,
            "one_run_per_size": self.rule,
            "ranking": [{k: clean(v) for k, v in r.items()} for r in self.ranking().to_dict(orient="records")],
            "warnings": list(self.warnings),
        }


def _ceiling_of(task_rows: pd.DataFrame, baselines: pd.DataFrame, task: str) -> float | None:
    """The best achievable value on these rows: their `ceiling` column, else the task's ceiling baseline."""
    if "ceiling" in task_rows and task_rows["ceiling"].notna().any():
        return float(task_rows["ceiling"].mean())
    c = baselines[(baselines["task"] == task) & (baselines["mode"] == "ceiling")]["value"]
    return float(c.mean()) if len(c) else None


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
    draws: pd.DataFrame | None = None,
) -> SaturationResult:
    """Fit bounded saturation curves per task for every size-dependent mode with at least 4 sizes.

    Rows with no `x` (or whose x spans less than a doubling) are size-independent baselines (LightGBM, ceiling, ...).
    One run per size (PER_SIZE_RULE). `draws`: the long table of paired bootstrap draws (run_id, task, mode,
    metric, seed, draw, value, resample), which gives paired intervals; without it the points' intervals are
    treated as independent. Tasks are ranked by the first mode of `primary` they have.
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
    if draws is not None and len(draws):
        draws = draws[draws["metric"] == metric]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    fits, skipped, matrices, kept = {}, [], {}, []
    hib = higher_is_better(metric)
    for (task, mode), g in sized.groupby(["task", "mode"]):
        g = one_run_per_size(g, x).sort_values(x)
        kept.append(g)
        se = (g["high"] - g["low"]) / (2 * z) if {"low", "high"} <= set(g) else None
        mat = None
        if draws is not None and "run_id" in g:
            mat = draw_matrix(draws[(draws["task"] == task) & (draws["mode"] == mode)], list(g["run_id"]), seed=seed)
        if mat is not None:
            matrices[(task, mode)] = mat
        bounds = m_inf_bounds(metric, _ceiling_of(g, baselines, task))
        try:
            fits[(task, mode)] = SaturationFit(threshold=threshold, higher_is_better=hib, n_boot=n_boot, level=level,
                                               seed=seed, bounds=bounds).fit(g[x], g["value"], se, draws=mat)
        except AnalysisError as e:
            skipped.append(f"{task}/{mode}: not fitted ({e})")
    points = pd.concat(kept, ignore_index=True) if kept else sized.iloc[:0]
    return SaturationResult(fits, baselines, points, x=x, metric=metric, threshold=threshold,
                            primary=tuple(primary), skipped=skipped, matrices=matrices)
