"""Approach 2: IsoFLOP profiles (Hoffmann et al. 2022, section 3.2).

Per compute budget C, loss is fitted as a parabola in log N; its minimum is N_opt(C) and D_opt = C/(6 N_opt).
Power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted across budgets in log-log space. The
bootstrap resamples runs within each budget, so every resample keeps every budget.
"""
from __future__ import annotations

from .conventions import tokens_for_compute
import warnings

import numpy as np
import pandas as pd

from . import diagnostics
from .allocation import AllocationLaw, loglinear
from .bootstrap import DEFAULT_LEVEL, interval, stratified_weights
from .errors import AnalysisError
from .inputs import average_replicates, budget_groups, labels_from, positive

MIN_SIZES = 3
FEW_SIZES = 5  # fewer sizes per budget than this: a parabola through them says little about its curvature


def _parabolas(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabolas y ~ p0 + p1 u + p2 u^2, u = x - mean(x), one per weight row.

    Returns (B, 3); rows with fewer than 3 distinct weighted x are NaN.
    """
    u = x - x.mean()
    X = np.column_stack([np.ones_like(u), u, u * u])
    XtWX = np.einsum("bn,ni,nj->bij", W, X, X)
    XtWy = np.einsum("bn,ni,n->bi", W, X, y)
    distinct = np.array([np.unique(x[w > 0]).size for w in W])
    ok = distinct >= MIN_SIZES
    out = np.full((W.shape[0], 3), np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(XtWX[ok], XtWy[ok][..., None])[..., 0]
    return out


def _minimum(coef: np.ndarray, xbar: float) -> tuple[np.ndarray, np.ndarray]:
    """(x*, loss at x*) of parabolas; NaN where the parabola opens downwards (no minimum)."""
    p0, p1, p2 = coef[..., 0], coef[..., 1], coef[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(p2 > 0, xbar - p1 / (2 * p2), np.nan)
        ls = np.where(p2 > 0, p0 - p1 * p1 / (4 * p2), np.nan)
    return xs, ls


class IsoFlopFit:
    """Approach 2. `fit(params, compute, loss, budget=None)`, then `minima_`, `allocation_`, `estimates_`."""

    approach = 2

    def __init__(self, *, n_boot: int = 1000, level: float = DEFAULT_LEVEL, seed: int = 0):
        self.n_boot = n_boot
        self.level = level
        self.seed = seed

    def fit(self, params, compute, loss, *, budget=None, seeds=None, lrs=None) -> "IsoFlopFit":
        """Group runs by `budget` labels when given (NaN rows, e.g. ladder runs, are left out), else by compute.
        `seeds` and `lrs` label replicates: seeds are averaged, the best learning rate is kept."""
        N, C, L = positive(params, "params"), positive(compute, "compute"), positive(loss, "loss")
        seeds = None if seeds is None else np.asarray(seeds)
        lrs = None if lrs is None else np.asarray(lrs, dtype=float)
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        if budget is not None:
            b = np.asarray(pd.to_numeric(pd.Series(budget), errors="coerce"), dtype=float)
            has = np.isfinite(b) & (b > 0)
            if (~has).any():
                self.notes_.append(f"{int((~has).sum())} run(s) without a budget (ladder runs) were left out")
            N, C, L, b = N[has], C[has], L[has], b[has]
            seeds = None if seeds is None else seeds[has]
            lrs = None if lrs is None else lrs[has]
            labels, values = labels_from(b)
            self.notes_.append("runs grouped into IsoFLOP budgets by the budget column")
        else:
            labels, values = budget_groups(C)
            self.notes_.append("runs grouped into IsoFLOP budgets by compute (values within 10% are one budget)")
        keep, rep, msgs = average_replicates({"N": N, "C": values[labels]}, L, seed=seeds, lr=lrs)
        self.notes_ += msgs
        N, C, L, labels = N[keep], C[keep], rep.loss, labels[keep]

        usable = []
        for g in range(values.size):
            n_sizes = np.unique(N[labels == g]).size
            if n_sizes >= MIN_SIZES:
                usable.append(g)
                if n_sizes < FEW_SIZES:
                    self.warnings_.append(f"budget {values[g]:.3g}: only {n_sizes} sizes; at least {FEW_SIZES} "
                                          "are needed for a parabola whose minimum can be trusted")
            elif n_sizes:
                self.warnings_.append(
                    f"budget {values[g]:.3g}: only {n_sizes} size(s); at least {MIN_SIZES} are needed, budget skipped"
                )
        if len(usable) < 2:
            raise AnalysisError(
                f"Approach 2 needs at least 2 compute budgets with at least {MIN_SIZES} model sizes each; got "
                f"{len(usable)} (budgets found: {values.size})"
            )
        mask = np.isin(labels, usable)
        N, C, L, labels = N[mask], C[mask], L[mask], labels[mask]
        self.data_ = pd.DataFrame({"params": N, "compute": C, "loss": L, "budget": values[labels]})
        self.n_points_ = int(N.size)

        rng = np.random.default_rng(self.seed)
        W = stratified_weights(labels, self.n_boot, rng) if self.n_boot > 0 else np.empty((0, N.size))
        x = np.log(N)
        rows, self.parabolas_ = [], {}
        xs_draws = np.full((W.shape[0], len(usable)), np.nan)
        for j, g in enumerate(usable):
            idx = labels == g
            xg, yg = x[idx], L[idx]
            coef = _parabolas(xg, yg, np.vstack([np.ones(idx.sum()), W[:, idx]]))
            xs, ls = _minimum(coef, xg.mean())
            xs_draws[:, j] = xs[1:]
            Cg = float(values[g])
            self.parabolas_[Cg] = (float(xg.mean()), coef[0])
            lo, hi = interval(np.exp(xs[1:, None]), self.level)
            order = np.argsort(xg)
            edge = bool(
                np.argmin(yg[order]) in (0, idx.sum() - 1) or not (xg.min() <= xs[0] <= xg.max())
            )
            rows.append(
                {
                    "budget": Cg,
                    "n_runs": int(idx.sum()),
                    "n_sizes": int(np.unique(xg).size),
                    "n_opt": float(np.exp(xs[0])),
                    "n_opt_low": float(lo[0]),
                    "n_opt_high": float(hi[0]),
                    "d_opt": float(tokens_for_compute(Cg, np.exp(xs[0]))),
                    "loss_min": float(ls[0]),
                    "edge": edge,
                    "convex": bool(np.isfinite(xs[0])),
                }
            )
        self.minima_ = pd.DataFrame(rows)
        for r in rows:
            if not r["convex"]:
                self.warnings_.append(f"budget {r['budget']:.3g}: loss is not convex in log N, no minimum; skipped")
            elif r["edge"]:
                self.warnings_.append(
                    f"budget {r['budget']:.3g}: the minimum is at the edge of the sizes tried "
                    "(extend the sizes on that side); its N_opt is an extrapolation"
                )
        good = self.minima_["convex"].to_numpy() & ~self.minima_["edge"].to_numpy()
        if good.sum() < 2 and (self.minima_["convex"].to_numpy()).sum() >= 2:
            good = self.minima_["convex"].to_numpy()
            self.warnings_.append("fewer than 2 budgets have their minimum inside the sizes tried: edge minima "
                                  "were used for the law after all; its exponents are extrapolations")
        elif (self.minima_["convex"] & self.minima_["edge"]).any():
            self.warnings_.append(f"{int((self.minima_['convex'] & self.minima_['edge']).sum())} budget(s) with the "
                                  "minimum at the edge were left out of the cross-budget law")
        if good.sum() < 2:
            raise AnalysisError("Approach 2 needs at least 2 budgets whose loss has a minimum in log N")
        self.minima_["in_law"] = good
        self.notes_.append("D_opt = C / (6 N_opt) at each budget's parabola minimum")

        # Budgets weigh by 1 / variance of their log N_opt over the bootstrap (a sharp minimum counts more).
        var = np.full(len(usable), np.nan)
        if W.shape[0] > 1:
            with warnings.catch_warnings():  # a budget whose every resample lacks a minimum: all-NaN column
                warnings.simplefilter("ignore", RuntimeWarning)
                var = np.nanvar(xs_draws, axis=0)
        wts = np.where(np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1.0), np.nan)
        wts = np.where(np.isfinite(wts), wts, np.nanmax(wts) if np.isfinite(wts).any() else 1.0)
        self.minima_["weight"] = wts / wts[good].sum()
        if np.isfinite(var).any():
            self.notes_.append("budgets weighted by the inverse bootstrap variance of their log N_opt")
        Cs = self.minima_["budget"].to_numpy()
        draws = np.full((W.shape[0], 4), np.nan)
        for i in range(W.shape[0]):
            ok = good & np.isfinite(xs_draws[i])
            if ok.sum() >= 2:
                a, lkn = loglinear(np.log(Cs[ok]), xs_draws[i, ok], wts[ok])
                b, lkd = loglinear(np.log(Cs[ok]), np.log(Cs[ok] / 6) - xs_draws[i, ok], wts[ok])
                draws[i] = (lkn, a, lkd, b)
        n_failed = int(np.isnan(draws).any(axis=1).sum())
        m = self.minima_[good]
        self.allocation_ = AllocationLaw.from_optima(
            m["budget"], m["n_opt"], m["d_opt"], draws[~np.isnan(draws).any(axis=1)], self.level, weights=wts[good]
        )
        self.estimates_ = self.allocation_.estimates
        if good.sum() == 2:
            self.warnings_.append("only 2 budgets: the exponents are a line through 2 points, with no check of fit")
        self.warnings_ += diagnostics.wide_exponents(self.estimates_)
        self.warnings_ += diagnostics.failed_resamples(n_failed, self.n_boot)
        return self

    def predict(self, params, budget: float) -> np.ndarray:
        """Loss on the fitted parabola of one of the fitted budgets."""
        key = min(self.parabolas_, key=lambda c: abs(np.log(c / budget)))
        if abs(np.log(key / budget)) > np.log(1.1):
            raise AnalysisError(f"no IsoFLOP parabola for budget {budget:.3g}; fitted: {sorted(self.parabolas_)}")
        xbar, (p0, p1, p2) = self.parabolas_[key]
        u = np.log(np.asarray(params, dtype=float)) - xbar
        return p0 + p1 * u + p2 * u * u

    def n_opt(self, compute) -> np.ndarray:
        return self.allocation_.n_opt(compute)

    def d_opt(self, compute) -> np.ndarray:
        return self.allocation_.d_opt(compute)

    def residuals(self) -> pd.DataFrame:
        out = self.data_.copy()
        out["predicted"] = np.nan
        for c in out.budget.unique():
            sel = out.budget == c
            out.loc[sel, "predicted"] = self.predict(out.loc[sel, "params"], c)
        out["residual"] = np.log(out["loss"]) - np.log(out["predicted"])
        return out

    def leave_one_budget_out(self) -> pd.DataFrame:
        """Fit the N_opt law without each budget and compare its prediction with that budget's own minimum."""
        m = self.minima_[self.minima_["convex"]].reset_index(drop=True)
        groups = np.arange(len(m))

        def fit_without(train):
            if train.sum() < 2:
                raise AnalysisError("too few budgets")
            a, lk = loglinear(np.log(m.budget[train]), np.log(m.n_opt[train]))
            return lambda test: np.exp(lk + a * np.log(m.budget[test].to_numpy()))

        return diagnostics.leave_one_budget_out(groups, m.budget.to_numpy(), fit_without, m.n_opt.to_numpy())
