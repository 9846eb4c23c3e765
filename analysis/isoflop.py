"""Approach 2: IsoFLOP profiles (Hoffmann et al. 2022, section 3.2).

Per compute budget C, loss is fitted as a function of N; its minimum is N_opt(C) and D_opt = C/(6 N_opt).
Power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted across budgets in log-log space. The
bootstrap resamples runs within each budget, so every resample keeps every budget.

The profile is, by default, the exact IsoFLOP curve of the parametric law (`isoflop_curve`: a constant plus
two power terms in N, exponents shared across budgets), whose minima are unbiased on noise-free data. The
parabola in log N of Hoffmann et al. (`profile="parabola"`) is biased when the loss rises more steeply on one
side of the minimum than on the other; it is always fitted too and reported beside (`parabola_minima_`,
`parabola_estimates_`) for comparison.
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
from .isoflop_curve import fit_profiles

MIN_SIZES = 3
PROFILES = ("curve", "parabola")
# The curve is fitted per budget to the sizes nearest its lowest loss. Real profiles are the law's shape only
# near their minimum: on Porian et al.'s 15 published setups (tests/data/porian2024*) a profile over all
# 6-12 sizes missed the authors' exponents by a median 0.033 (up to 0.13), the 5 nearest sizes by 0.014
# (up to 0.033, every published value inside the interval). On data from the law any window is exact.
WINDOW = 5
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


def _window(x: np.ndarray, y: np.ndarray, group: np.ndarray, size: int | None) -> np.ndarray:
    """Mask of the points among the `size` distinct sizes nearest (in rank) each budget's lowest loss."""
    keep = np.ones(x.size, dtype=bool)
    if not size:
        return keep
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        sizes = np.unique(x[idx])
        if sizes.size <= size:
            continue
        best = np.searchsorted(sizes, x[idx][np.argmin(y[idx])])
        lo = min(max(0, best - size // 2), sizes.size - size)
        keep[idx] = np.isin(x[idx], sizes[lo : lo + size])
    return keep


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

    def __init__(self, *, n_boot: int = 1000, level: float = DEFAULT_LEVEL, seed: int = 0, profile: str = "curve",
                 window: int | None = WINDOW, n_jobs: int | None = 1):
        if profile not in PROFILES:
            raise AnalysisError(f"IsoFLOP profile {profile!r}: choose one of {PROFILES}")
        self.n_boot = n_boot
        self.level = level
        self.seed = seed
        self.profile = profile
        self.window = window
        self.n_jobs = n_jobs

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
        group = np.searchsorted(np.array(usable), labels)
        budgets = values[np.array(usable)]
        par_point, par_loss, par_draws = self._parabola_minima(x, L, group, budgets, W)
        if self.profile == "curve":
            if (np.bincount(group) > 3).sum() == 0:
                raise AnalysisError("the IsoFLOP curve needs a budget with at least 4 sizes to determine its two "
                                    "exponents; use profile='parabola' (3 sizes are a parabola's minimum)")
            near = _window(x, L, group, self.window)
            prof, curve_draws, self.exponent_draws_ = fit_profiles(
                x[near], L[near], group[near], len(budgets), self.n_boot, np.random.default_rng([self.seed, 1]),
                self.n_jobs)
            self.profiles_ = prof
            point, loss_min = prof.minima()
            draws = curve_draws
            self.notes_.append(
                f"IsoFLOP minima from the exact IsoFLOP curve e + a N^-alpha + b N^beta per budget (shared "
                f"alpha={prof.alpha:.3g}, beta={prof.beta:.3g}, variable projection)"
                + (f", each fitted to the {self.window} sizes nearest its lowest loss" if self.window else "")
                + "; the parabola's minima over all sizes are reported beside for comparison")
        else:
            point, loss_min, draws = par_point, par_loss, par_draws
        self.minima_ = self._minima_table(x, L, group, budgets, point, loss_min, draws)
        self.warnings_ += self._minima_warnings(self.minima_)
        self.allocation_, n_failed = self._law(self.minima_, draws, warn=True)
        if self.profile == "curve":
            parabola = self._minima_table(x, L, group, budgets, par_point, par_loss, par_draws)
            self.parabola_minima_ = parabola
            try:
                par_law = self._law(parabola, par_draws, warn=False)[0]
                self.parabola_estimates_ = par_law.estimates
            except AnalysisError:
                par_law, self.parabola_estimates_ = None, {}
            self.allocation_.draws = self._both_shapes(self.allocation_, par_law)
        else:
            self.parabola_minima_, self.parabola_estimates_ = self.minima_, self.allocation_.estimates
        self.estimates_ = self.allocation_.estimates
        self.notes_.append("D_opt = C / (6 N_opt) at each budget's minimum")
        self.warnings_ += diagnostics.wide_exponents(self.estimates_)
        self.warnings_ += diagnostics.failed_resamples(n_failed, self.n_boot)
        return self

    def _parabola_minima(self, x, L, group, budgets, W):
        """Per budget: the parabola's log N*, its loss, and (B, K) bootstrap draws of log N*."""
        self.parabolas_ = {}
        point, loss_min = np.full(len(budgets), np.nan), np.full(len(budgets), np.nan)
        draws = np.full((W.shape[0], len(budgets)), np.nan)
        for j, Cg in enumerate(budgets):
            idx = group == j
            xg = x[idx]
            coef = _parabolas(xg, L[idx], np.vstack([np.ones(idx.sum()), W[:, idx]]))
            xs, ls = _minimum(coef, xg.mean())
            point[j], loss_min[j], draws[:, j] = xs[0], ls[0], xs[1:]
            self.parabolas_[float(Cg)] = (float(xg.mean()), coef[0])
        return point, loss_min, draws

    def _minima_table(self, x, L, group, budgets, point, loss_min, draws) -> pd.DataFrame:
        rows = []
        for j, Cg in enumerate(budgets):
            idx = group == j
            xg, yg = x[idx], L[idx]
            lo, hi = interval(np.exp(draws[:, [j]]), self.level)
            edge = bool(np.argmin(yg[np.argsort(xg)]) in (0, idx.sum() - 1) or not (xg.min() <= point[j] <= xg.max()))
            rows.append({
                "budget": float(Cg), "n_runs": int(idx.sum()), "n_sizes": int(np.unique(xg).size),
                "n_opt": float(np.exp(point[j])), "n_opt_low": float(lo[0]), "n_opt_high": float(hi[0]),
                "d_opt": float(tokens_for_compute(Cg, np.exp(point[j]))), "loss_min": float(loss_min[j]),
                "edge": edge, "convex": bool(np.isfinite(point[j])),
            })
        return pd.DataFrame(rows)

    @staticmethod
    def _minima_warnings(minima: pd.DataFrame) -> list[str]:
        w = []
        for r in minima.to_dict(orient="records"):
            if not r["convex"]:
                w.append(f"budget {r['budget']:.3g}: loss has no minimum in N inside the fitted profile; skipped")
            elif r["edge"]:
                w.append(f"budget {r['budget']:.3g}: the minimum is at the edge of the sizes tried "
                         "(extend the sizes on that side); its N_opt is an extrapolation")
        return w

    def _law(self, minima: pd.DataFrame, xs_draws: np.ndarray, *, warn: bool) -> tuple[AllocationLaw, int]:
        """The allocation law across budgets from the minima (adds an `in_law` and a `weight` column)."""
        warns = self.warnings_ if warn else []
        convex, edge = minima["convex"].to_numpy(), minima["edge"].to_numpy()
        good = convex & ~edge
        if good.sum() < 2 and convex.sum() >= 2:
            good = convex
            warns.append("fewer than 2 budgets have their minimum inside the sizes tried: edge minima "
                         "were used for the law after all; its exponents are extrapolations")
        elif (convex & edge).any():
            warns.append(f"{int((convex & edge).sum())} budget(s) with the minimum at the edge were left out of "
                         "the cross-budget law")
        if good.sum() < 2:
            raise AnalysisError("Approach 2 needs at least 2 budgets whose loss has a minimum in log N")
        minima["in_law"] = good
        # Budgets weigh by 1 / variance of their log N_opt over the bootstrap (a sharp minimum counts more).
        var = np.full(len(minima), np.nan)
        if xs_draws.shape[0] > 1:
            with warnings.catch_warnings():  # a budget whose every resample lacks a minimum: all-NaN column
                warnings.simplefilter("ignore", RuntimeWarning)
                var = np.nanvar(xs_draws, axis=0)
        wts = np.where(np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1.0), np.nan)
        wts = np.where(np.isfinite(wts), wts, np.nanmax(wts) if np.isfinite(wts).any() else 1.0)
        minima["weight"] = wts / wts[good].sum()
        if warn and np.isfinite(var).any():
            self.notes_.append("budgets weighted by the inverse bootstrap variance of their log N_opt")
        Cs = minima["budget"].to_numpy()
        draws = np.full((xs_draws.shape[0], 4), np.nan)
        for i in range(xs_draws.shape[0]):
            ok = good & np.isfinite(xs_draws[i])
            if ok.sum() >= 2:
                a, lkn = loglinear(np.log(Cs[ok]), xs_draws[i, ok], wts[ok])
                b, lkd = loglinear(np.log(Cs[ok]), np.log(Cs[ok] / 6) - xs_draws[i, ok], wts[ok])
                draws[i] = (lkn, a, lkd, b)
        n_failed = int(np.isnan(draws).any(axis=1).sum())
        m = minima[good]
        draws = draws[~np.isnan(draws).any(axis=1)]
        law = AllocationLaw.from_optima(m["budget"], m["n_opt"], m["d_opt"], draws, self.level, weights=wts[good])
        law.draws = self._overdispersed(law, m, wts[good], draws, warn)
        if good.sum() == 2:
            warns.append("only 2 budgets: the exponents are a line through 2 points, with no check of fit")
        return law, n_failed

    def _both_shapes(self, curve: AllocationLaw, parabola: AllocationLaw | None) -> np.ndarray:
        """The curve's draws pooled with the parabola's, half each: the interval then also covers the choice of
        profile shape.

        The point estimate is the curve's (unbiased on the law). Its own bootstrap sees the loss noise but not
        that real profiles are the law's shape only approximately: on Porian et al.'s setups the curve, the
        parabola and the authors' Akima interpolation put the minima 5-20% apart, and on synthetic studies the
        curve's intervals alone held the truth 60-95% of the time, the parabola's 80-100%."""
        if parabola is None or not len(parabola.draws) or not len(curve.draws):
            return curve.draws
        k = min(len(curve.draws), len(parabola.draws))
        self.notes_.append("intervals of Approach 2 pool the bootstrap draws of the curve and of the parabola (half "
                           "each), so they cover the choice of profile shape as well as the loss noise")
        return np.vstack([curve.draws[:k], parabola.draws[:k]])

    def _overdispersed(self, law: AllocationLaw, m: pd.DataFrame, wts: np.ndarray, draws: np.ndarray,
                       warn: bool) -> np.ndarray:
        """Draws widened by the Birge ratio when the minima scatter about the line more than their own
        bootstrap spread allows.

        phi = sum_k w_k r_k^2 / (K - 2), with r_k the residual of log N*_k from the fitted line and w_k = 1 /
        its bootstrap variance, is 1 on average when each minimum's interval accounts for its error. On real
        runs it is often several times that: the profiles are not exactly the law's shape near their minima,
        an error no resample of one budget's runs can show, but the scatter across budgets does. The draws'
        deviations from the point law are then scaled by sqrt(phi) (the weighted least-squares rule for
        overdispersion)."""
        k = len(m)
        self.birge_ratio_ = float("nan")
        if k < 3 or not len(draws) or not np.isfinite(wts).all():
            return draws
        lc, ln = np.log(m["budget"].to_numpy()), np.log(m["n_opt"].to_numpy())
        r = ln - (law.log_kn + law.a * lc)
        phi = float(np.sum(wts * r * r) / (k - 2))
        self.birge_ratio_ = phi
        if not np.isfinite(phi) or phi <= 1.0:
            return draws
        if warn:
            self.notes_.append(
                f"the budgets' minima scatter about the fitted line {phi:.3g} times more (in variance) than their "
                f"bootstrap intervals allow: the intervals on a, b and N_opt are widened by sqrt({phi:.3g}) = "
                f"{np.sqrt(phi):.3g}")
        centre = np.array([law.log_kn, law.a, law.log_kd, law.b])
        return centre + np.sqrt(phi) * (draws - centre)

    def predict(self, params, budget: float) -> np.ndarray:
        """Loss on the fitted profile (curve or parabola) of one of the fitted budgets."""
        key = min(self.parabolas_, key=lambda c: abs(np.log(c / budget)))
        if abs(np.log(key / budget)) > np.log(1.1):
            raise AnalysisError(f"no IsoFLOP profile for budget {budget:.3g}; fitted: {sorted(self.parabolas_)}")
        if self.profile == "curve":
            return self.profiles_.loss(sorted(self.parabolas_).index(key), np.log(np.asarray(params, dtype=float)))
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
