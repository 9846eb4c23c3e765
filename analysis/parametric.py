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

from . import diagnostics, lse_huber
from .allocation import AllocationLaw
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate
from .errors import AnalysisError
from .inputs import average_replicates, need_points, positive
from .power_sum import fit_power_sum, refit

PARAMS = ("E", "A", "B", "alpha", "beta")
DERIVED = ("a", "b", "G")


def _named(thetas: np.ndarray) -> dict[str, np.ndarray]:
    """theta rows [log A, log B, alpha, beta, log E] -> named parameters and derived quantities."""
    t = np.atleast_2d(thetas)
    alpha, beta = t[:, 2], t[:, 3]
    A, B, E = np.exp(t[:, 0]), np.exp(t[:, 1]), np.exp(t[:, 4])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        G = np.exp((np.log(alpha) + t[:, 0] - np.log(beta) - t[:, 1]) / s)
        return {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta, "a": beta / s, "b": alpha / s, "G": G}


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
    ):
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
        res = fit_power_sum(
            logx, np.log(L), delta=self.delta, n_boot=self.n_boot, seed=self.seed,
            n_jobs=self.n_jobs, boot_starts=self.boot_starts,
        )
        self.theta_ = res.theta
        self.solutions_ = res.solutions
        self.boot_thetas_ = res.boot_thetas
        self._starts = res.boot_starts
        point = {k: float(v[0]) for k, v in _named(res.theta).items()}
        draws = _named(res.boot_thetas) if len(res.boot_thetas) else None
        self.params_ = {k: point[k] for k in PARAMS}
        self.estimates_: dict[str, Estimate] = {
            k: estimate(point[k], None if draws is None else draws[k], self.level) for k in PARAMS + DERIVED
        }
        self.allocation_ = self._allocation(point, draws)
        self.n_points_ = int(N.size)
        self.notes_.append(
            f"Huber loss (delta={self.delta:g}) on log L summed over {N.size} points; L-BFGS-B from "
            f"{len(lse_huber.initialisation_grid(2))} grid starts screened to the best per exponent pair"
        )
        self.warnings_ += self._diagnose(res, N, D)
        return self

    def _allocation(self, point, draws) -> AllocationLaw:
        def law(p):
            lg = np.log(p["G"])
            return np.column_stack(
                [lg - p["a"] * np.log(6), p["a"], -lg - p["b"] * np.log(6), p["b"]]
            )

        pt = law({k: np.atleast_1d(v) for k, v in point.items()})[0]
        # Failed resamples stay as NaN rows so that draw i of the law and of boot_thetas_ are the same resample.
        d = law(draws) if draws is not None else np.empty((0, 4))
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
