"""Approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022).

Fitted in log space, LSE(a - alpha log N, b - beta log D, e) against log L, with a Huber loss summed over
points and L-BFGS-B with the exact gradient from a grid of initialisations (see lse_huber and power_sum).
Minimising L on the line 6ND = C gives, in closed form,

    N_opt(C) = G (C/6)^a,  D_opt(C) = G^-1 (C/6)^b,  a = beta/(alpha+beta),  b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)).
"""
from __future__ import annotations

from .conventions import compute_6nd
import numpy as np
import pandas as pd

from . import diagnostics, jackknife, lse_huber
from .allocation import AllocationLaw
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate
from .errors import AnalysisError
from .inputs import average_replicates, need_points, positive
from .power_sum import fit_power_sum, refit

PARAMS = ("E", "A", "B", "alpha", "beta")
DERIVED = ("a", "b", "G")
# How the intervals are drawn: "jackknife" = delete-one-budget (t, G - 1 df; analysis/jackknife.py), "bootstrap" =
# runs resampled, "auto" = the jackknife wherever runs carry at least jackknife.MIN_GROUPS budget labels.
INTERVALS = ("auto", "jackknife", "bootstrap")
THETA_BOUNDS = [(-np.inf, np.inf), (-np.inf, np.inf), lse_huber.BOUND_EXPONENT, lse_huber.BOUND_EXPONENT,
                lse_huber.BOUND_LOG_OFFSET]


def _named(thetas: np.ndarray) -> dict[str, np.ndarray]:
    """theta rows [log A, log B, alpha, beta, log E] -> named parameters and derived quantities."""
    t = np.atleast_2d(thetas)
    alpha, beta = t[:, 2], t[:, 3]
    A, B, E = np.exp(t[:, 0]), np.exp(t[:, 1]), np.exp(t[:, 4])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        G = np.exp((np.log(alpha) + t[:, 0] - np.log(beta) - t[:, 1]) / s)
        return {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta, "a": beta / s, "b": alpha / s, "G": G}


def _law_rows(p: dict) -> np.ndarray:
    """Named parameters -> allocation-law rows [log k_N, a, log k_D, b] with N_opt = k_N C^a (C = 6ND)."""
    lg = np.log(p["G"])
    return np.column_stack([lg - p["a"] * np.log(6), p["a"], -lg - p["b"] * np.log(6), p["b"]])


class ParametricFit:
    """Approach 3. `fit(params, tokens, loss)`, then `predict(N, D)`, `estimates_`, `allocation_`."""

    approach = 3

    def __init__(
        self,
        *,
        delta: float = lse_huber.DEFAULT_DELTA,
        n_boot: int = 1000,
        level: float = DEFAULT_LEVEL,
        seed: int = 0,
        n_jobs: int | None = 1,
        boot_starts: int = 3,
        interval: str = "auto",
    ):
        if interval not in INTERVALS:
            raise AnalysisError(f"interval must be one of {INTERVALS}; got {interval!r}")
        self.interval = interval
        self.delta = delta
        self.n_boot = n_boot
        self.level = level
        self.seed = seed
        self.n_jobs = n_jobs
        self.boot_starts = boot_starts

    def fit(self, params, tokens, loss, *, budget=None, seeds=None, lrs=None) -> "ParametricFit":
        """Fit to runs with N = params, D = tokens; `budget` (optional, one label per run) is kept for plots.
        `seeds` and `lrs` label replicates: seeds are averaged, the best learning rate is kept."""
        N, D, L = positive(params, "params"), positive(tokens, "tokens"), positive(loss, "loss")
        if not (N.size == D.size == L.size):
            raise AnalysisError("params, tokens and loss must have the same length")
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        keep, rep, msgs = average_replicates({"N": N, "D": D}, L, seed=seeds, lr=lrs)
        self.notes_ += msgs
        N, D, L = N[keep], D[keep], rep.loss
        need_points(N.size, len(PARAMS) + 1, "Approach 3 (5 parameters: E, A, B, alpha, beta)")
        for name, v in (("model sizes (params)", N), ("token counts", D)):
            if np.unique(v).size < 3:
                raise AnalysisError(f"Approach 3 needs at least 3 distinct {name}; got {np.unique(v).size}")
        budget = None if budget is None else np.asarray(budget)[keep]
        self.data_ = pd.DataFrame({"params": N, "tokens": D, "loss": L})
        if budget is not None:
            self.data_["budget"] = budget

        logx = np.vstack([np.log(N), np.log(D)])
        self.interval_method_ = self._interval_method(budget)
        res = fit_power_sum(
            logx, np.log(L), delta=self.delta, n_boot=self.n_boot if self.interval_method_ == "bootstrap" else 0,
            seed=self.seed, n_jobs=self.n_jobs, boot_starts=self.boot_starts,
        )
        self.theta_ = res.theta
        self.solutions_ = res.solutions
        self._starts = res.boot_starts
        self.boot_thetas_ = res.boot_thetas
        law_draws = None
        if self.interval_method_ == "jackknife" and self.n_boot > 0:
            self.boot_thetas_, law_draws = self._jackknife_draws(logx, np.log(L), budget)
        point = {k: float(v[0]) for k, v in _named(res.theta).items()}
        draws = _named(self.boot_thetas_) if len(self.boot_thetas_) else None
        self.params_ = {k: point[k] for k in PARAMS}
        self.allocation_ = self._allocation(point, draws, law_draws)
        if law_draws is not None:  # a, b and G straight from the law's own t draws (linear in log N_opt)
            draws = {**draws, "a": law_draws[:, 1], "b": law_draws[:, 3],
                     "G": np.exp(law_draws[:, 0] + law_draws[:, 1] * np.log(6))}
        self.estimates_: dict[str, Estimate] = {
            k: estimate(point[k], None if draws is None else draws[k], self.level) for k in PARAMS + DERIVED
        }
        self.n_points_ = int(N.size)
        self.notes_.append(
            f"Huber loss (delta={self.delta:g}) on log L summed over {N.size} points; L-BFGS-B from "
            f"{len(lse_huber.initialisation_grid(2))} grid starts screened to the best per exponent pair"
        )
        self.notes_.append(self._interval_note(budget))
        self.warnings_ += self._diagnose(res, N, D)
        return self

    def _interval_method(self, budget) -> str:
        enough = jackknife.n_groups(budget) >= jackknife.MIN_GROUPS
        if self.interval == "jackknife" and not enough:
            raise AnalysisError(f"a delete-one-budget jackknife needs runs labelled with at least "
                                f"{jackknife.MIN_GROUPS} budgets; got {jackknife.n_groups(budget)}")
        return "jackknife" if self.interval == "jackknife" or (self.interval == "auto" and enough) else "bootstrap"

    def _jackknife_draws(self, logx, y, budget) -> tuple[np.ndarray, np.ndarray]:
        """The fit repeated without each budget (from this fit's basins), as paired t draws (analysis/jackknife.py)
        of theta and of the allocation law's rows [log k_N, a, log k_D, b]: N_opt at any compute is log-linear
        in the law, so its interval is the jackknife t interval of log N_opt itself."""
        reps = jackknife.replicates(budget, lambda keep: refit(logx[:, keep], y[keep], self._starts, self.delta))
        self.jackknife_thetas_ = reps
        ok = np.all(np.isfinite(reps), axis=1)
        n_draws = max(self.n_boot, jackknife.MIN_DRAWS)  # draws cost nothing here: enough for steady percentiles
        W = jackknife.draw_weights(int(ok.sum()), n_draws, np.random.default_rng(self.seed))
        laws = _law_rows(_named(reps[ok]))
        point_law = _law_rows(_named(self.theta_))[0]
        return (jackknife.t_draws(self.theta_, reps[ok], W, THETA_BOUNDS),
                jackknife.t_draws(point_law, laws, W))

    def _interval_note(self, budget) -> str:
        level = f"{100 * self.level:g}%"
        if self.n_boot <= 0:
            return "no intervals (n_boot=0)"
        if self.interval_method_ == "jackknife":
            G = jackknife.n_groups(budget)
            return (f"{level} intervals: delete-one-budget jackknife over {G} budgets (t, {G - 1} df): they cover "
                    "run-to-run noise and budgets that sit off the law together")
        return (f"{level} intervals: bootstrap of runs ({self.n_boot} resamples): they cover run-to-run noise, "
                "not a form that is wrong across the range")

    def _allocation(self, point, draws, law_draws=None) -> AllocationLaw:
        pt = _law_rows({k: np.atleast_1d(v) for k, v in point.items()})[0]
        # Failed resamples stay as NaN rows so that draw i of the law and of boot_thetas_ are the same resample.
        d = law_draws if law_draws is not None else _law_rows(draws) if draws is not None else np.empty((0, 4))
        return AllocationLaw(*pt, draws=d, level=self.level)

    def _diagnose(self, res, N, D) -> list[str]:
        w = []
        if N.size < diagnostics.FEW_POINTS:
            w.append(f"only {N.size} points for 5 parameters: the fit is fragile")
        corr = np.corrcoef(np.log(N), np.log(D))[0, 1]
        if abs(corr) > diagnostics.COLLINEAR:
            w.append(
                f"log N and log D are almost collinear (corr {corr:.3f}, e.g. a fixed tokens-per-parameter "
                "ladder): alpha and beta are not separately identified; add IsoFLOP grids"
            )
        lo_e, hi_e = lse_huber.BOUND_EXPONENT
        for name, v in (("alpha", res.theta[2]), ("beta", res.theta[3])):
            if v <= lo_e + 1e-3 or v >= hi_e - 1e-3:
                w.append(f"{name} = {v:.3g} is at its bound [{lo_e}, {hi_e}]: the law is not determined by the data")
        if res.theta[4] <= lse_huber.BOUND_LOG_OFFSET[0] + 1e-3:
            w.append("E went to its lower bound (~0): the irreducible loss is not identified by these runs")
        if not res.converged:
            w.append(f"L-BFGS-B did not report convergence: {res.message}")
        best = res.solutions[0]
        for s in res.solutions[1:]:
            if s.fun <= best.fun * 1.01 + 1e-12 and np.max(np.abs(s.theta[2:4] - best.theta[2:4])) > 0.05:
                w.append(
                    f"another solution fits almost as well (alpha={s.theta[2]:.3g}, beta={s.theta[3]:.3g} vs "
                    f"{best.theta[2]:.3g}, {best.theta[3]:.3g}): the exponents are weakly identified"
                )
                break
        w += diagnostics.wide_exponents(self.estimates_)
        w += diagnostics.wide_factors(self.estimates_, ("E", "alpha", "beta"))
        if self.interval_method_ == "jackknife" and self.n_boot > 0:
            reps = self.jackknife_thetas_
            w += diagnostics.failed_resamples(int(np.isnan(reps).any(axis=1).sum()), len(reps))
        else:
            w += diagnostics.failed_resamples(res.n_failed, self.n_boot)
        return w

    # -- model -----------------------------------------------------------------------------------------
    def predict(self, params, tokens) -> np.ndarray:
        p = self.params_
        N, D = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]

    def predict_draws(self, params, tokens, *, paired: bool = False) -> np.ndarray:
        """Bootstrap draws of the predicted loss: (n_boot, n) at every point, or with `paired` (n_boot,) with
        draw i evaluated at point i (params and tokens then have one entry per draw)."""
        d = _named(self.boot_thetas_)
        N = np.atleast_1d(np.asarray(params, dtype=float))
        D = np.atleast_1d(np.asarray(tokens, dtype=float))
        if paired:
            return d["E"] + d["A"] * N ** -d["alpha"] + d["B"] * D ** -d["beta"]
        E, A, B, al, be = (d[k][:, None] for k in PARAMS)
        return E + A * N[None] ** -al + B * D[None] ** -be

    def param_draws(self) -> dict[str, np.ndarray] | None:
        """Bootstrap draws of E, A, B, alpha, beta (failed resamples dropped), or None without a bootstrap."""
        if not len(self.boot_thetas_):
            return None
        d = _named(self.boot_thetas_)
        ok = np.all([np.isfinite(d[k]) for k in PARAMS], axis=0)
        return {k: d[k][ok] for k in PARAMS}

    def n_opt(self, compute) -> np.ndarray:
        return self.allocation_.n_opt(compute)

    def d_opt(self, compute) -> np.ndarray:
        return self.allocation_.d_opt(compute)

    def residuals(self) -> pd.DataFrame:
        """Per point: predicted loss and the residual log L - log L_hat (what the fit minimises)."""
        out = self.data_.copy()
        out["compute"] = compute_6nd(out["params"], out["tokens"])
        out["predicted"] = self.predict(out["params"], out["tokens"])
        out["residual"] = np.log(out["loss"]) - np.log(out["predicted"])
        return out

    def leave_one_budget_out(self, budget=None) -> pd.DataFrame:
        """Refit without each budget (from this fit's basins) and report the relative error on its losses.

        `budget` labels the fitted points (default: the budget given to `fit`); NaN labels (ladder runs) are
        never held out.
        """
        if budget is None and "budget" not in self.data_:
            raise AnalysisError("leave-one-budget-out needs budget labels: pass budget= to fit or here")
        labels = np.asarray(self.data_["budget"] if budget is None else budget, dtype=float)
        values = np.unique(labels[np.isfinite(labels)])
        groups = np.where(np.isfinite(labels), np.searchsorted(values, labels), -1)
        logx = np.vstack([np.log(self.data_["params"]), np.log(self.data_["tokens"])])
        y = np.log(self.data_["loss"].to_numpy())

        def fit_without(train):
            if train.sum() <= len(PARAMS):
                raise AnalysisError("too few points")
            theta = refit(logx[:, train], y[train], self._starts, self.delta)
            return lambda test: np.exp(lse_huber.predict_log(theta, logx[:, test]))

        return diagnostics.leave_one_budget_out(groups, values, fit_without, self.data_["loss"].to_numpy())
