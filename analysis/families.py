"""Scaling-law families behind one interface, each fitted by medscale's robust estimator.

Which law to trust is an empirical question: the Chinchilla form fits most tables well inside their range and
can still miss the costlier runs a study is planned around. This module puts several published forms behind
one interface so that `selection.py` can score them where it matters, on held-out costlier runs:

    family.fit(params, tokens, loss[, unique_tokens])     -> the family, fitted (bootstrap over runs)
    family.predict(N, D[, U])                            -> point predictions of the loss
    family.predict_draws(N, D[, U], noise=False)         -> (n_boot, n) bootstrap draws; noise=True adds the
                                                            run-to-run scatter (a NEW run's loss)
    family.n_opt(C[, U]) / n_opt_draws(C[, U])           -> compute-optimal N on 6ND = C, with an interval
    family.params_, estimates_, warnings_, at_bound_, sigma_ (residual scatter in log L)

Families (`FAMILIES`, `make_family(name)`):

- ``chinchilla`` (5 parameters): L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022), the existing
  `ParametricFit`, wrapped. Run weights, when given, use the same lse_huber/power_sum machinery.
- ``gadre`` (4): L = E + A/N^b + B/D^b, Chinchilla with one exponent for N and D, the form Gadre et al. 2024
  fit as L(N, M) = E + A N^-b + B' (M N)^-b (M = D/N tokens per parameter) to extrapolate 300x in compute.
  Nested in Chinchilla (alpha = beta); N_opt in closed form, proportional to C^0.5.
- ``kaplan`` (5): L = E + ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D, Kaplan et al. 2020 eq. (1.5) with an
  irreducible offset E. N and D do not add: the data term is raised to alpha_D together with the size term,
  so the penalty for too few tokens grows with N (overfitting-style interaction). N_opt in closed form.
- ``farseer`` (7): L = E + A/N^alpha + B (N/N_ref)^b_N (D/D_ref)^-beta(N),
  beta(N) = beta + beta_N ln(N/N_ref): a data term whose coefficient and exponent move smoothly with N. Li et
  al. 2025 ("Predictable Scale: Part II, Farseer") fit L = exp(a3 N^g + b3) + exp(a2 N^b + b2) D^-exp(a1 N^a + b1)
  (9 parameters): B(N) = exp(a2 N^b + b2) and beta(N) = exp(a1 N^a + b1). Expanding both to first order in
  ln N around the runs' centre gives ln B(N) and beta(N) linear in ln N, which is this form; their N-only term
  is kept as E + A/N^alpha. Two parameters beyond Chinchilla, which it contains (b_N = beta_N = 0), so it is
  identified wherever D varies at several N. (log B, b_N, beta, beta_N) enter log of the data term linearly:
  log[B(N) D^-beta(N)] = c + b_N x - beta y - beta_N x y with x, y the centred log N, log D, a bilinear form,
  so the family does not depend on the reference point; N_ref and D_ref (`refs_`) are the geometric means of
  the fitted runs and only say where B and beta are quoted. N_opt by numeric minimisation along 6ND = C.
- ``data_constrained`` (7; needs unique tokens): Muennighoff et al. 2023, the existing `DataConstrainedFit`.

Every family is fitted the same way: Huber loss (delta 1e-3) on log L, SUMMED over runs, L-BFGS-B with the
exact gradient from a grid of starts screened in one vectorised pass to the best per exponent combination, the
lowest objective wins; the bootstrap resamples runs (integer multiplicities) and refits from the full-data
basins. numpy/scipy/pandas only.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from . import bounds as _bounds
from . import lse_huber
from ._blas import single_threaded_blas
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate, interval, parallel_map, resample_weights, split
from .errors import AnalysisError
from .inputs import average_replicates, need_points, positive

FAMILIES = ("chinchilla", "gadre", "kaplan", "farseer", "data_constrained")
DEFAULT_N_BOOT = 200
BASIN_FACTOR = 1.5  # a basin joins the bootstrap starts when its objective is within this factor of the best
# Search range for a numeric N_opt: this many e-folds either side of sqrt(C / 120) (20 tokens per parameter).
N_OPT_SPAN = 12.0
# L-BFGS-B runs from at most this many screened starts per full-data fit: Kaplan the 12 best (p, q) rows of
# its screen, Farseer the 6 best Chinchilla rows (the 2 best also with beta_N = +-0.03). On the Gadre, OLMo and
# Farseer tables, every start of the screens (30x more for Farseer) reaches no lower objective.
MAX_STARTS = 12


# ---------------------------------------------------------------------------------------------------------
# the shared estimator: Huber on log L summed, L-BFGS-B with exact gradients, multistart, bootstrap
# ---------------------------------------------------------------------------------------------------------
class _Law:
    """A law in log space, in centred coordinates (x = log N - mu_N, y = log D - mu_D) for conditioning.

    Subclasses give `names` (optimiser coordinates), `box`, `log_rows(T, x, y)` (log L for parameter rows T
    (B, P) at points broadcast against (B, n)), `value_jac(theta, x, y)` (log L and its (P, n) Jacobian) and
    `starts(x, y, logL, w, delta)`.
    """

    names: tuple = ()
    box: list = []
    shape_cols: tuple = ()  # the exponents: solutions that differ there are different basins

    def __init__(self, mu: np.ndarray):
        self.mu = np.asarray(mu, dtype=float)

    def log_rows(self, T, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def value_jac(self, theta, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, thetas, x, y, logL, w, delta, chunk_elems=2_000_000) -> np.ndarray:
        """Objective for many parameter rows at once (the initialisation screen)."""
        thetas = np.atleast_2d(thetas)
        out = np.empty(thetas.shape[0])
        step = max(1, chunk_elems // max(1, x.size))
        for lo in range(0, thetas.shape[0], step):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                r = self.log_rows(thetas[lo: lo + step], x[None], y[None]) - logL[None]
            c = np.clip(r, -delta, delta)
            h = 0.5 * c * c + delta * (np.abs(r) - np.abs(c))
            out[lo: lo + step] = (np.where(np.isfinite(h), h, np.inf) * w).sum(axis=1)
        return out


def _lse(*z):
    """log(sum exp z_i) of broadcastable arrays, and the softmax weights."""
    m = functools.reduce(np.maximum, z)
    e = [np.exp(zi - m) for zi in z]
    tot = sum(e)
    return m + np.log(tot), [ei / tot for ei in e]


class _KaplanLaw(_Law):
    """log L = LSE(q LSE(a - p x, b - y), e):  L = E + ((N_c/N)^p + D_c/D)^q, p = alpha_N/alpha_D, q = alpha_D."""

    names = ("a", "b", "p", "q", "e")
    shape_cols = (2, 3)
    box = [(-100.0, 100.0), (-100.0, 100.0), (0.0, 10.0), (1e-3, 5.0), lse_huber.BOUND_LOG_OFFSET]
    P_GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    Q_GRID = (0.03, 0.07, 0.15, 0.3, 0.6, 1.0)

    def log_rows(self, T, x, y):
        T = np.atleast_2d(T)
        a, b, p, q, e = (T[:, i, None] for i in range(5))
        inner, _ = _lse(a - p * x, b - y)
        out, _ = _lse(q * inner, e + 0 * inner)
        return out

    def value_jac(self, theta, x, y):
        a, b, p, q, e = theta
        inner, (s1, s2) = _lse(a - p * x, b - y)
        out, (rt, re) = _lse(q * inner, np.full_like(inner, e))
        J = np.empty((5, x.size))
        J[0] = rt * q * s1
        J[1] = rt * q * s2
        J[2] = -J[0] * x
        J[3] = rt * inner
        J[4] = re
        return out, J

    def starts(self, x, y, logL, w, delta):
        """Data-scaled grid: E a share of the smallest loss, the rest of the loss at the centre split between
        the two inner terms; screened to the best row per (p, q)."""
        Lmin, Lc = float(np.exp(logL.min())), float(np.exp(np.average(logL, weights=w)))
        rows = []
        for fe, p, q, share, lev in itertools.product((0.02, 0.25, 0.5, 0.75, 0.9), self.P_GRID, self.Q_GRID,
                                                      (-3.0, -1.5, 0.0, 1.5, 3.0), (-0.5, 0.0, 0.5)):
            E = fe * Lmin
            rest = max(Lc - E, 1e-3 * Lc)
            inner = (np.log(rest) + lev) / q
            b = inner - np.log1p(np.exp(share))
            rows.append((b + share, b, p, q, np.log(E)))
        grid = np.clip(np.array(rows), [lo for lo, _ in self.box], [hi for _, hi in self.box])
        return _screen(self, grid, (2, 3), x, y, logL, w, delta)[:MAX_STARTS]

    def named(self, T) -> dict[str, np.ndarray]:
        T = np.atleast_2d(T)
        a, b, p, q, e = (T[:, i] for i in range(5))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return {"E": np.exp(e), "N_c": np.exp(a / p + self.mu[0]), "D_c": np.exp(b + self.mu[1]),
                    "alpha_N": p * q, "alpha_D": q}

    def log_n_opt(self, T, compute) -> np.ndarray:
        """Closed form: (N_c/N)^p + 6 D_c N / C is smallest at N^(p+1) = p N_c^p C / (6 D_c)."""
        T = np.atleast_2d(T)
        a, b, p = T[:, 0], T[:, 1], T[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.log(p) + a + p * self.mu[0] - b - self.mu[1] + np.log(compute / 6.0)) / (p + 1.0)


class _FarseerLaw(_Law):
    """log L = LSE(a - alpha x, c + bN x - beta y - betaN x y, e)."""

    names = ("a", "alpha", "c", "beta", "b_N", "beta_N", "e")
    shape_cols = (1, 3, 5)
    box = [lse_huber.BOUND_LOG_COEF_CENTRED, lse_huber.BOUND_EXPONENT, lse_huber.BOUND_LOG_COEF_CENTRED,
           lse_huber.BOUND_EXPONENT, (-5.0, 5.0), (-1.0, 1.0), lse_huber.BOUND_LOG_OFFSET]

    def log_rows(self, T, x, y):
        T = np.atleast_2d(T)
        a, al, c, be, bn, ben, e = (T[:, i, None] for i in range(7))
        out, _ = _lse(a - al * x, c + bn * x - be * y - ben * x * y, e + 0 * x * y)
        return out

    def value_jac(self, theta, x, y):
        a, al, c, be, bn, ben, e = theta
        out, (r1, r2, r3) = _lse(a - al * x, c + bn * x - be * y - ben * x * y, np.full_like(x, e))
        J = np.empty((7, x.size))
        J[0] = r1
        J[1] = -r1 * x
        J[2] = r2
        J[3] = -r2 * y
        J[4] = r2 * x
        J[5] = -r2 * x * y
        J[6] = r3
        return out, J

    def starts(self, x, y, logL, w, delta):
        """The best rows of Chinchilla's screened Hoffmann grid (b_N = beta_N = 0: the family contains
        Chinchilla), the best two also with the data term's exponent tilted either way."""
        grid = lse_huber.initialisation_grid(2)  # Hoffmann's grid is in raw log N, log D: screen there
        ch = lse_huber.screen_grid(grid, np.vstack([x + self.mu[0], y + self.mu[1]]), logL, w, delta)
        rows = []
        for i, t in enumerate(ch[: MAX_STARTS // 2]):
            a, c = t[0] - t[2] * self.mu[0], t[1] - t[3] * self.mu[1]  # centred log-coefficients
            for ben in (0.0, -0.03, 0.03) if i < 2 else (0.0,):
                rows.append((a, t[2], c, t[3], 0.0, ben, t[4]))
        return np.clip(np.array(rows), [lo for lo, _ in self.box], [hi for _, hi in self.box])

    def named(self, T) -> dict[str, np.ndarray]:
        T = np.atleast_2d(T)
        a, al, c, be, bn, ben, e = (T[:, i] for i in range(7))
        with np.errstate(over="ignore"):
            return {"E": np.exp(e), "A": np.exp(a + al * self.mu[0]), "alpha": al, "B": np.exp(c), "beta": be,
                    "b_N": bn, "beta_N": ben}


class _GadreLaw(_Law):
    """log L = LSE(a - b x, c - b y, e): Chinchilla with one exponent b for N and D."""

    names = ("a", "c", "b", "e")
    shape_cols = (2,)
    box = [lse_huber.BOUND_LOG_COEF_CENTRED, lse_huber.BOUND_LOG_COEF_CENTRED, lse_huber.BOUND_EXPONENT,
           lse_huber.BOUND_LOG_OFFSET]

    def log_rows(self, T, x, y):
        T = np.atleast_2d(T)
        a, c, b, e = (T[:, i, None] for i in range(4))
        out, _ = _lse(a - b * x, c - b * y, e + 0 * x * y)
        return out

    def value_jac(self, theta, x, y):
        a, c, b, e = theta
        out, (r1, r2, r3) = _lse(a - b * x, c - b * y, np.full_like(x, e))
        return out, np.array([r1, r2, -r1 * x - r2 * y, r3])

    def starts(self, x, y, logL, w, delta):
        """The best rows of Chinchilla's screened Hoffmann grid, each with its alpha and with its beta as the
        shared exponent."""
        grid = lse_huber.initialisation_grid(2)  # Hoffmann's grid is in raw log N, log D: screen there
        ch = lse_huber.screen_grid(grid, np.vstack([x + self.mu[0], y + self.mu[1]]), logL, w, delta)
        rows = [(t[0] - b * self.mu[0], t[1] - b * self.mu[1], b, t[4]) for t in ch[: MAX_STARTS // 2]
                for b in (t[2], t[3])]
        return np.clip(np.array(rows), [lo for lo, _ in self.box], [hi for _, hi in self.box])

    def named(self, T) -> dict[str, np.ndarray]:
        T = np.atleast_2d(T)
        a, c, b, e = (T[:, i] for i in range(4))
        with np.errstate(over="ignore"):
            return {"E": np.exp(e), "A": np.exp(a + b * self.mu[0]), "B": np.exp(c + b * self.mu[1]), "alpha": b,
                    "beta": b}

    def log_n_opt(self, T, compute) -> np.ndarray:
        """Closed form: the two terms are equal at the optimum, a - b x = c - b y with y = log(C/6) - log N - mu_D."""
        T = np.atleast_2d(T)
        a, c, b = T[:, 0], T[:, 1], T[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (a - c) / (2 * b) + 0.5 * (self.mu[0] - self.mu[1] + np.log(compute / 6.0))


def _screen(law: _Law, grid, shape_cols, x, y, logL, w, delta) -> np.ndarray:
    """Best grid row per combination of the `shape_cols` (the exponents), best first."""
    return lse_huber.best_per_group(grid, law.batch(grid, x, y, logL, w, delta), list(shape_cols))


def _objective(theta, law: _Law, x, y, logL, w, delta):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        yhat, J = law.value_jac(theta, x, y)
    r = yhat - logL
    c = np.clip(r, -delta, delta)
    f = float(np.dot(w, 0.5 * c * c + delta * (np.abs(r) - np.abs(c))))
    g = (J * (w * c)).sum(axis=1)
    if not (np.isfinite(f) and np.isfinite(g).all()):
        return 1e30, np.zeros_like(theta)
    return f, g


@dataclass(frozen=True)
class _Sol:
    theta: np.ndarray
    fun: float
    success: bool
    message: str


def _minimise(theta0, law: _Law, x, y, logL, w, delta) -> _Sol:
    res = minimize(_objective, np.asarray(theta0, dtype=float), args=(law, x, y, logL, w, delta), jac=True,
                   method="L-BFGS-B", bounds=law.box, options=lse_huber.LBFGS_OPTIONS)
    return _Sol(np.asarray(res.x, dtype=float).copy(), float(res.fun), bool(res.success), str(res.message))


def _best_of(starts, law, x, y, logL, w, delta) -> np.ndarray:
    best = None
    for s in np.atleast_2d(starts):
        sol = _minimise(s, law, x, y, logL, w, delta)
        if np.isfinite(sol.fun) and sol.fun < 1e29 and (best is None or sol.fun < best.fun):
            best = sol
    return best.theta if best is not None else np.full(np.atleast_2d(starts).shape[1], np.nan)


def _boot_chunk(args) -> np.ndarray:
    starts, law, x, y, logL, weights, delta = args
    with single_threaded_blas():
        return np.array([_best_of(starts, law, x, y, logL, wt, delta) for wt in weights]).reshape(len(weights), -1)


def _fit_law(law: _Law, x, y, logL, w, *, delta, n_boot, seed, n_jobs, boot_starts):
    """Full-data multistart, distinct basins, bootstrap from the near ones: (best, basins, boot thetas)."""
    starts = law.starts(x, y, logL, w, delta)
    with single_threaded_blas():
        sols = sorted((_minimise(s, law, x, y, logL, w, delta) for s in starts), key=lambda s: s.fun)
    sols = [s for s in sols if np.isfinite(s.fun) and s.fun < 1e29]
    if not sols:
        raise AnalysisError("no start of the optimiser gave a finite objective: check the table's values")
    kept: list[_Sol] = []
    cols = list(law.shape_cols)
    for s in sols:  # distinct basins: some exponent differs by more than 1e-2
        if all(np.max(np.abs(s.theta[cols] - t.theta[cols])) > 1e-2 for t in kept):
            kept.append(s)
    best = kept[0]
    near = np.array([s.theta for s in kept if s.fun <= BASIN_FACTOR * best.fun + 1e-12][: max(1, boot_starts)])
    boot = np.empty((0, len(law.names)))
    if n_boot > 0:
        mult = resample_weights(x.size, n_boot, np.random.default_rng(seed)) * w[None]
        chunks = [(near, law, x, y, logL, wc, delta) for wc in split(mult, n_jobs)]
        boot = np.vstack(parallel_map(_boot_chunk, chunks, n_jobs))
    return best, kept, boot, len(starts)


# ---------------------------------------------------------------------------------------------------------
# the common interface
# ---------------------------------------------------------------------------------------------------------
class LawFamily:
    """Base class: the interface every family shares (see the module docstring)."""

    name = ""
    n_params = 0
    formula = ""
    needs_unique_tokens = False

    def __init__(self, *, delta: float = lse_huber.DEFAULT_DELTA, n_boot: int = DEFAULT_N_BOOT,
                 level: float = DEFAULT_LEVEL, seed: int = 0, n_jobs: int | None = 1, boot_starts: int = 2):
        self.delta, self.n_boot, self.level, self.seed = delta, int(n_boot), level, seed
        self.n_jobs, self.boot_starts = n_jobs, boot_starts

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, params, tokens, loss, unique_tokens=None, *, weights=None, seeds=None, lrs=None) -> "LawFamily":
        """Fit to runs (N = params, D = tokens, L = loss; U = unique_tokens for the data-constrained law).
        `weights` (one positive number per run) multiply each run's Huber term; seeds are averaged and the best
        learning rate kept, as in every medscale fit."""
        N, D, L = positive(params, "params"), positive(tokens, "tokens"), positive(loss, "loss")
        U = None if unique_tokens is None else positive(unique_tokens, "unique_tokens")
        if not (N.size == D.size == L.size) or (U is not None and U.size != N.size):
            raise AnalysisError("params, tokens, loss (and unique_tokens) must have the same length")
        if self.needs_unique_tokens and U is None:
            raise AnalysisError(f"the {self.name} law needs each run's unique tokens (unique_tokens)")
        w = np.ones(N.size) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != N.shape or not (np.isfinite(w).all() and (w > 0).all()):
            raise AnalysisError("weights must be one positive finite number per run")
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        keys = {"N": N, "D": D} if U is None else {"N": N, "D": D, "U": U}
        keep, rep, msgs = average_replicates(keys, L, seed=seeds, lr=lrs)
        self.notes_ += msgs
        N, D, L, w = N[keep], D[keep], rep.loss, w[keep]
        U = None if U is None else U[keep]
        need_points(N.size, self.n_params + 1, f"the {self.name} law ({self.n_params} parameters)")
        for what, v in (("model sizes (params)", N), ("token counts", D)):
            if np.unique(v).size < 3:
                raise AnalysisError(f"the {self.name} law needs at least 3 distinct {what}; got {np.unique(v).size}")
        self.data_ = pd.DataFrame({"params": N, "tokens": D, "loss": L})
        if U is not None:
            self.data_["unique_tokens"] = U
        self.weights_ = w
        self.n_points_ = int(N.size)
        if U is not None and not self.needs_unique_tokens and (D > U * (1 + 1e-9)).any():
            self.notes_.append(f"the {self.name} law counts repeated tokens as new ({int((D > U).sum())} runs repeat)")
        self._fit(N, D, L, U, None if weights is None else w)
        self._residual_scatter(N, D, L, U)
        self.at_bound_ = self._at_bound()
        seen = set(self.warnings_)
        for b in self.at_bound_ if self._own_bound_warnings() else ():
            if b.where == "estimate":
                msg = f"{b.parameter} {b.label}: {b.meaning}"
                if msg not in seen:
                    self.warnings_.append(msg)
        return self

    def _fit(self, N, D, L, U, w):  # pragma: no cover - abstract
        raise NotImplementedError

    def _residual_scatter(self, N, D, L, U):
        """Run-to-run scatter for a NEW run: the log residuals of the full-data fit, centred and inflated by
        sqrt(n / (n - p)) for the parameters the fit spent on them."""
        r = np.log(L) - np.log(self.predict(N, D, U))
        n = r.size
        infl = np.sqrt(n / max(n - self.n_params, 1))
        self.residuals_ = (r - np.median(r)) * infl
        self.sigma_ = float(1.4826 * np.median(np.abs(self.residuals_)))
        self.rms_ = float(np.sqrt(np.mean(r ** 2)))

    def _at_bound(self) -> list:
        return _bounds.at_bound(self)

    def _own_bound_warnings(self) -> bool:
        """Whether fit() words the at-bound parameters as warnings (wrapped fits already do)."""
        return getattr(self, "fit_", None) is None

    # -- prediction ------------------------------------------------------------------------------------
    def predict(self, params, tokens, unique_tokens=None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_draws(self, params, tokens, unique_tokens=None, *, noise: bool = False, seed=None,
                      noise_pool=None) -> np.ndarray:
        """(n_boot, n) bootstrap draws of the predicted loss at every point (NaN rows: failed resamples).

        noise=False: the uncertainty of the law's parameters (where a mean run would land). noise=True also
        multiplies each draw by exp(r), r drawn from the fit's own centred, inflated log residuals: the spread
        of a NEW run's loss (parameters plus run-to-run scatter and whatever misfit the law has on the fitted
        runs; not the law's misfit beyond them, which only validation on costlier runs measures).
        `noise_pool` (log errors) replaces the residuals, e.g. the errors seen on held-out costlier runs."""
        draws = self._draws(params, tokens, unique_tokens)
        if noise and draws.size:
            pool = self.residuals_ if noise_pool is None or not len(noise_pool) else np.asarray(noise_pool, float)
            rng = np.random.default_rng(self.seed + 7919 if seed is None else seed)
            draws = draws * np.exp(rng.choice(pool, size=draws.shape))
        return draws

    def _draws(self, params, tokens, unique_tokens):  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_interval(self, params, tokens, unique_tokens=None, *, noise: bool = True) -> pd.DataFrame:
        """Per point: the prediction and its `level` interval (with noise: for a new run)."""
        point = np.atleast_1d(self.predict(params, tokens, unique_tokens)).astype(float)
        lo, hi = interval(self.predict_draws(params, tokens, unique_tokens, noise=noise), self.level) \
            if self.n_boot else (np.full(point.shape, np.nan),) * 2
        return pd.DataFrame({"loss": point, "low": lo, "high": hi})

    # -- allocation ------------------------------------------------------------------------------------
    def n_opt_draws(self, compute: float, unique_tokens=None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def n_opt(self, compute: float, unique_tokens=None) -> Estimate:
        """Compute-optimal N at `compute` FLOPs (6ND = C), with its bootstrap interval."""
        C = _budget(compute)
        value = float(self._n_opt_point(C, unique_tokens))
        draws = self.n_opt_draws(C, unique_tokens) if self.n_boot else None
        return estimate(value, draws, self.level)

    def _n_opt_point(self, compute, unique_tokens):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- reporting -------------------------------------------------------------------------------------
    def _estimates(self, point: dict, draws: dict | None) -> dict[str, Estimate]:
        return {k: estimate(point[k], None if draws is None else draws[k], self.level) for k in point}

    def to_dict(self) -> dict:
        return {"family": self.name, "n_params": self.n_params, "formula": self.formula, "n_points": self.n_points_,
                "estimates": {k: v.to_dict() for k, v in self.estimates_.items()},
                "residual_scatter_log": self.sigma_, "at_bound": [b.to_dict() for b in self.at_bound_],
                "warnings": list(self.warnings_), "notes": list(self.notes_)}


def _budget(compute) -> float:
    C = float(np.asarray(compute, dtype=float).ravel()[0])
    if not np.isfinite(C) or C <= 0:
        raise AnalysisError(f"budget must be a positive number of FLOPs; got {compute!r}")
    return C


def _argmin_log_n(loss_rows, compute: float, rows: int, n_grid: int = 300) -> np.ndarray:
    """log N minimising loss_rows(logN (rows, G), logD (rows, G)) -> (rows, G) along 6ND = C, per row: a log grid
    of +-N_OPT_SPAN e-folds around sqrt(C/120), refined three times. NaN where the loss is not finite, +-inf
    where the minimum stays at the edge of the range (no optimum inside)."""
    centre = 0.5 * np.log(compute / 120.0)
    lo, hi = np.full(rows, centre - N_OPT_SPAN), np.full(rows, centre + N_OPT_SPAN)
    lc = np.log(compute / 6.0)
    edge = None
    for k in range(4):
        x = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n_grid)[None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            L = loss_rows(x, lc - x)
        L = np.where(np.isfinite(L), L, np.inf)
        i = np.argmin(L, axis=1)
        if k == 0:
            edge = np.where(i == 0, -1, np.where(i == n_grid - 1, 1, 0))
            bad = ~np.isfinite(L).any(axis=1)
        step = (hi - lo) / (n_grid - 1)
        best = x[np.arange(rows), i]
        lo, hi = best - 2 * step, best + 2 * step
    out = best.copy()
    out[edge < 0], out[edge > 0] = -np.inf, np.inf
    out[bad] = np.nan
    return out


class _CustomFamily(LawFamily):
    """A family fitted by this module's estimator (`_fit_law`) on a `_Law`."""

    law_class: type = _Law

    def _fit(self, N, D, L, U, w):
        mu = np.array([np.log(N).mean(), np.log(D).mean()])
        self.law_ = self.law_class(mu)
        x, y = np.log(N) - mu[0], np.log(D) - mu[1]
        weights = np.ones(N.size) if w is None else w
        best, basins, boot, n_starts = _fit_law(self.law_, x, y, np.log(L), weights, delta=self.delta,
                                                n_boot=self.n_boot,
                                      seed=self.seed, n_jobs=self.n_jobs, boot_starts=self.boot_starts)
        self.theta_, self.boot_thetas_, self.solutions_ = best.theta, boot, basins
        self.refs_ = {"N_ref": float(np.exp(mu[0])), "D_ref": float(np.exp(mu[1]))}
        point = {k: float(v[0]) for k, v in self.law_.named(best.theta).items()}
        draws = self.law_.named(boot) if len(boot) else None
        self.params_ = point
        self.estimates_ = self._estimates(point, draws)
        if not best.success:
            self.warnings_.append(f"L-BFGS-B did not report convergence: {best.message}")
        n_failed = int(np.isnan(boot).any(axis=1).sum()) if len(boot) else 0
        if self.n_boot and n_failed / self.n_boot > 0.05:
            self.warnings_.append(f"{n_failed} of {self.n_boot} bootstrap resamples could not be fitted; "
                                  "intervals use the rest")
        for s in basins[1:]:
            if s.fun <= best.fun * 1.01 + 1e-12:
                self.warnings_.append(f"another solution of the {self.name} law fits almost as well with different "
                                      "parameters: they are weakly identified by these runs")
                break
        self.notes_.append(f"{self.name} law: Huber loss (delta={self.delta:g}) on log L summed over {N.size} runs; "
                           f"L-BFGS-B from {n_starts} screened starts, the best per exponent combination")

    def _xy(self, params, tokens):
        N = np.atleast_1d(np.asarray(params, dtype=float))
        D = np.atleast_1d(np.asarray(tokens, dtype=float))
        return np.log(N) - self.law_.mu[0], np.log(D) - self.law_.mu[1]

    def predict(self, params, tokens, unique_tokens=None) -> np.ndarray:
        x, y = self._xy(params, tokens)
        x, y = np.broadcast_arrays(x, y)
        return np.exp(self.law_.log_rows(self.theta_[None], x[None], y[None])[0])

    def _draws(self, params, tokens, unique_tokens):
        x, y = self._xy(params, tokens)
        x, y = np.broadcast_arrays(x, y)
        if not len(self.boot_thetas_):
            return np.empty((0, x.size))
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(self.law_.log_rows(self.boot_thetas_, x[None], y[None]))

    def _bound_specs(self) -> list[tuple[str, int, str]]:
        """(reported name, optimiser index, scale) of parameters `bounds.at_bound` does not already cover."""
        return []

    def _at_bound(self) -> list:
        found = list(_bounds.at_bound(self))
        boot = self.boot_thetas_
        for name, i, scale in self._bound_specs():
            lo, hi = self.law_.box[i]
            v = float(self.theta_[i])
            hit = None
            for side, bound in (("lower", lo), ("upper", hi)):
                if abs(v - bound) <= _bounds.TOL:
                    hit = side
                    found.append(_bounds.AtBound(name, v, bound, side, "estimate",
                                                 _bounds._meaning(name, side, "estimate", bound, self)))
            if len(boot):
                lo_i, hi_i = interval(boot[:, i], self.level)
                for side, bound, end in (("lower", lo, lo_i), ("upper", hi, hi_i)):
                    if side != hit and np.isfinite(end) and abs(float(end) - bound) <= _bounds.TOL:
                        found.append(_bounds.AtBound(name, float(end), bound, side, "interval",
                                                     _bounds._meaning(name, side, "interval", bound, self)))
        return sorted(found, key=lambda b: b.where != "estimate")


class _ClosedFormFamily(_CustomFamily):
    """A family whose law gives log N_opt(C) in closed form (`law_class.log_n_opt`)."""

    def _n_opt_point(self, compute, unique_tokens=None):
        return float(np.exp(self.law_.log_n_opt(self.theta_, compute)[0]))

    def n_opt_draws(self, compute, unique_tokens=None) -> np.ndarray:
        if not len(self.boot_thetas_):
            return np.empty(0)
        with np.errstate(over="ignore"):
            return np.exp(self.law_.log_n_opt(self.boot_thetas_, _budget(compute)))


class KaplanFamily(_ClosedFormFamily):
    """Kaplan et al. 2020 eq. (1.5) with an irreducible offset: L = E + ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D."""

    name = "kaplan"
    n_params = 5
    formula = "L = E + ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D"
    law_class = _KaplanLaw

    def _bound_specs(self):
        return [("alpha_N/alpha_D", 2, "linear"), ("alpha_D", 3, "linear")]


class GadreFamily(_ClosedFormFamily):
    """Chinchilla's form with one exponent for N and D, as Gadre et al. 2024 fit it (L(N, M) = E + A N^-b +
    B' (M N)^-b with M = D/N): L = E + A/N^b + B/D^b. Nested in Chinchilla (alpha = beta), so N_opt grows as
    C^0.5; one parameter fewer to extrapolate with."""

    name = "gadre"
    n_params = 4
    formula = "L = E + A/N^b + B/D^b (one exponent)"
    law_class = _GadreLaw


class FarseerFamily(_CustomFamily):
    """A first-order Farseer (Li et al. 2025) form: the data term's coefficient and exponent vary with N.

    L = E + A/N^alpha + B (N/N_ref)^b_N (D/D_ref)^-(beta + beta_N ln(N/N_ref)); see the module docstring for how
    it relates to Farseer's 9-parameter law. `refs_` holds N_ref and D_ref (geometric means of the fitted runs).
    """

    name = "farseer"
    n_params = 7
    formula = "L = E + A/N^alpha + B (N/N_ref)^b_N (D/D_ref)^-(beta + beta_N ln(N/N_ref))"
    law_class = _FarseerLaw

    def _bound_specs(self):
        return [("b_N", 4, "linear"), ("beta_N", 5, "linear")]

    def beta_at(self, params) -> np.ndarray:
        """The data exponent beta(N) at sizes N (where a negative value means more tokens would raise the loss)."""
        x = np.log(np.asarray(params, dtype=float)) - self.law_.mu[0]
        return self.theta_[3] + self.theta_[5] * x

    def _rows(self, T):
        law = self.law_

        def loss_rows(logN, logD):
            return np.exp(law.log_rows(T, logN - law.mu[0], logD - law.mu[1]))
        return loss_rows

    def _n_opt_point(self, compute, unique_tokens=None):
        return float(np.exp(_argmin_log_n(self._rows(self.theta_[None]), compute, 1)[0]))

    def n_opt_draws(self, compute, unique_tokens=None) -> np.ndarray:
        T = self.boot_thetas_
        if not len(T):
            return np.empty(0)
        out = np.full(len(T), np.nan)
        ok = np.isfinite(T).all(axis=1)
        out[ok] = np.exp(_argmin_log_n(self._rows(T[ok]), _budget(compute), int(ok.sum())))
        return out


class ChinchillaFamily(LawFamily):
    """Hoffmann et al. 2022, L = E + A/N^alpha + B/D^beta: medscale's `ParametricFit`, wrapped.

    With run weights (which ParametricFit does not take) the same estimator runs from lse_huber's screened
    grid with the weights in the summed Huber loss, and the bootstrap multiplies them by the resample counts."""

    name = "chinchilla"
    n_params = 5
    formula = "L = E + A/N^alpha + B/D^beta"

    def _fit(self, N, D, L, U, w):
        from .parametric import ParametricFit

        if w is None:
            self._adopt(ParametricFit(delta=self.delta, n_boot=self.n_boot, level=self.level, seed=self.seed,
                                      n_jobs=self.n_jobs, boot_starts=self.boot_starts).fit(N, D, L))
            return
        self.fit_ = None
        self.theta_, self.boot_thetas_ = _weighted_power_sum(
            np.vstack([np.log(N), np.log(D)]), np.log(L), w, delta=self.delta, n_boot=self.n_boot,
            seed=self.seed, n_jobs=self.n_jobs, boot_starts=self.boot_starts)
        self.notes_.append(f"chinchilla law fitted with run weights (Huber, delta={self.delta:g}, summed)")
        self._set_params()

    def _adopt(self, fit):
        self.fit_ = fit
        self.theta_, self.boot_thetas_ = fit.theta_, fit.boot_thetas_
        self.warnings_ += list(fit.warnings_)
        self.notes_ += list(fit.notes_)
        self._set_params()

    def _set_params(self):
        from .parametric import PARAMS, _named

        named = _named(self.theta_)
        self.params_ = {k: float(named[k][0]) for k in PARAMS}
        draws = _named(self.boot_thetas_) if len(self.boot_thetas_) else None
        self.estimates_ = self._estimates({k: float(v[0]) for k, v in named.items()}, draws)

    @classmethod
    def from_fit(cls, fit) -> "ChinchillaFamily":
        """The family of an existing ParametricFit (e.g. `fit_table(...).fit`), without refitting."""
        return _from_fit(cls(delta=fit.delta, n_boot=fit.n_boot, level=fit.level, seed=fit.seed), fit)

    def _draws_named(self):
        from .parametric import _named

        return _named(self.boot_thetas_)

    def predict(self, params, tokens, unique_tokens=None) -> np.ndarray:
        p = self.params_
        N, D = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]

    def _draws(self, params, tokens, unique_tokens):
        N = np.atleast_1d(np.asarray(params, dtype=float))
        D = np.atleast_1d(np.asarray(tokens, dtype=float))
        if not len(self.boot_thetas_):
            return np.empty((0, np.broadcast(N, D).size))
        d = self._draws_named()
        with np.errstate(over="ignore", invalid="ignore"):
            return (d["E"][:, None] + d["A"][:, None] * N[None] ** -d["alpha"][:, None]
                    + d["B"][:, None] * D[None] ** -d["beta"][:, None])

    @staticmethod
    def _closed_n_opt(named, compute):
        with np.errstate(over="ignore", invalid="ignore"):
            return named["G"] * (compute / 6.0) ** named["a"]

    def _n_opt_point(self, compute, unique_tokens=None):
        from .parametric import _named

        return float(self._closed_n_opt(_named(self.theta_), compute)[0])

    def n_opt_draws(self, compute, unique_tokens=None) -> np.ndarray:
        if not len(self.boot_thetas_):
            return np.empty(0)
        return self._closed_n_opt(self._draws_named(), _budget(compute))


def _weighted_boot(args):
    starts, logx, y, weights, delta = args
    from .power_sum import refit

    return np.array([refit(logx, y, starts, delta, weights=wt) for wt in weights]).reshape(len(weights), -1)


def _weighted_power_sum(logx, y, w, *, delta, n_boot, seed, n_jobs, boot_starts):
    """ParametricFit's estimator with per-run weights, from lse_huber's and power_sum's own pieces."""
    grid = lse_huber.initialisation_grid(logx.shape[0])
    starts = lse_huber.screen_grid(grid, logx, y, w, delta)
    with single_threaded_blas():
        sols = lse_huber.distinct(lse_huber.multistart(starts, logx, y, w, delta), logx.shape[0])
    best = sols[0]
    near = np.array([s.theta for s in sols if s.fun <= BASIN_FACTOR * best.fun + 1e-12][: max(1, boot_starts)])
    boot = np.empty((0, 2 * logx.shape[0] + 1))
    if n_boot > 0:
        mult = resample_weights(y.size, n_boot, np.random.default_rng(seed)) * w[None]
        boot = np.vstack(parallel_map(_weighted_boot, [(near, logx, y, wc, delta) for wc in split(mult, n_jobs)],
                                      n_jobs))
    return best.theta, boot


class DataConstrainedFamily(LawFamily):
    """Muennighoff et al. 2023, L(N, D, U): medscale's `DataConstrainedFit`, wrapped (needs unique tokens).

    `predict(N, D)` without U treats every token as new (U = infinity); `n_opt(C, U)` minimises the law along
    6ND = C with U unique tokens per bootstrap draw (repeats priced by R*_D)."""

    name = "data_constrained"
    n_params = 7
    formula = "L = E + A/N'^alpha + B/D'^beta, D' and N' discounted for repeats (R*_D, R*_N)"
    needs_unique_tokens = True

    def __init__(self, *, excess_params: bool = True, **kw):
        super().__init__(**kw)
        self.excess_params = excess_params
        if not excess_params:
            self.n_params = 6

    def _fit(self, N, D, L, U, w):
        from .data_constrained import DataConstrainedFit

        if w is not None:
            self.notes_.append("the data-constrained law does not take run weights: fitted unweighted")
        self._adopt(DataConstrainedFit(delta=self.delta, n_boot=self.n_boot, level=self.level, seed=self.seed,
                                       n_jobs=self.n_jobs, boot_starts=self.boot_starts,
                                       excess_params=self.excess_params).fit(N, D, U, L))

    @classmethod
    def from_fit(cls, fit) -> "DataConstrainedFamily":
        """The family of an existing DataConstrainedFit (e.g. `fit_table(..., unique_tokens=...).fit`)."""
        return _from_fit(cls(delta=fit.delta, n_boot=fit.n_boot, level=fit.level, seed=fit.seed,
                             excess_params=fit.excess_params), fit)

    def _adopt(self, fit):
        self.fit_ = fit
        self.theta_, self.boot_thetas_ = fit.theta_, fit.boot_thetas_
        self.params_ = dict(fit.params_)
        self.estimates_ = dict(fit.estimates_)
        self.warnings_ += list(fit.warnings_)
        self.notes_ += list(fit.notes_)

    def _at_bound(self) -> list:
        return _bounds.at_bound(self.fit_)

    @staticmethod
    def _u(unique_tokens, shape):
        if unique_tokens is None:
            return np.full(shape, np.inf)
        return np.broadcast_to(np.asarray(unique_tokens, dtype=float), shape)

    def predict(self, params, tokens, unique_tokens=None) -> np.ndarray:
        N, D = np.broadcast_arrays(np.atleast_1d(np.asarray(params, float)), np.atleast_1d(np.asarray(tokens, float)))
        return self.fit_.predict(N, D, self._u(unique_tokens, D.shape))

    def _draws(self, params, tokens, unique_tokens):
        N, D = np.broadcast_arrays(np.atleast_1d(np.asarray(params, float)), np.atleast_1d(np.asarray(tokens, float)))
        if not len(self.boot_thetas_):
            return np.empty((0, D.size))
        with np.errstate(over="ignore", invalid="ignore"):
            return self.fit_.predict_draws(N, D, self._u(unique_tokens, D.shape))

    def _line(self, p, compute, unique_tokens, rows):
        from .data_constrained import loss_of

        U = np.inf if unique_tokens is None else float(np.asarray(unique_tokens, dtype=float).ravel()[0])
        pp = {k: np.atleast_1d(v)[:, None] for k, v in p.items()}

        def loss_rows(logN, logD):
            return loss_of(pp, np.exp(logN), np.exp(logD), U)
        return _argmin_log_n(loss_rows, compute, rows)

    def _n_opt_point(self, compute, unique_tokens=None):
        if unique_tokens is None or not np.isfinite(np.asarray(unique_tokens, float)).all():
            return float(np.asarray(self.fit_.n_opt(compute)).ravel()[0])
        return float(np.exp(self._line(self.params_, compute, unique_tokens, 1)[0]))

    def n_opt_draws(self, compute, unique_tokens=None) -> np.ndarray:
        from .data_constrained import _named

        if not len(self.boot_thetas_):
            return np.empty(0)
        C = _budget(compute)
        if unique_tokens is None or not np.isfinite(np.asarray(unique_tokens, float)).all():
            return self.fit_.allocation_.n_opt_draws(C)[:, 0]
        d = _named(self.boot_thetas_, self.excess_params)
        d = {k: d[k] for k in self.fit_.param_names}
        out = np.full(len(self.boot_thetas_), np.nan)
        ok = np.all([np.isfinite(v) for v in d.values()], axis=0)
        out[ok] = np.exp(self._line({k: v[ok] for k, v in d.items()}, C, unique_tokens, int(ok.sum())))
        return out


def _from_fit(fam: LawFamily, fit) -> LawFamily:
    """Give `fam` an already fitted ParametricFit or DataConstrainedFit's results (no refit)."""
    fam.notes_, fam.warnings_ = [], []
    d = fit.data_
    N, D, L = (d[c].to_numpy(dtype=float) for c in ("params", "tokens", "loss"))
    U = d["unique_tokens"].to_numpy(dtype=float) if "unique_tokens" in d else None
    fam.data_ = d[[c for c in ("params", "tokens", "unique_tokens", "loss") if c in d]].copy()
    fam.weights_ = np.ones(N.size)
    fam.n_points_ = int(N.size)
    fam._adopt(fit)
    fam._residual_scatter(N, D, L, U)
    fam.at_bound_ = fam._at_bound()
    return fam


_CLASSES = {"chinchilla": ChinchillaFamily, "gadre": GadreFamily, "kaplan": KaplanFamily,
            "farseer": FarseerFamily, "data_constrained": DataConstrainedFamily}


def make_family(name: str, **kw) -> LawFamily:
    """A new, unfitted family by name (one of FAMILIES); keyword arguments go to its constructor."""
    try:
        return _CLASSES[name](**kw)
    except KeyError:
        raise AnalysisError(f"unknown law family {name!r}: choose from {', '.join(FAMILIES)}") from None


def family_table(families) -> pd.DataFrame:
    """One row per fitted family: name, parameters, residual scatter, parameters at a bound, warnings."""
    rows = []
    for f in (families.values() if isinstance(families, dict) else families):
        rows.append({"family": f.name, "n_params": f.n_params, "n_points": f.n_points_,
                     "residual_scatter_pct": 100 * f.sigma_,
                     "at_bound": ", ".join(f"{b.parameter} ({b.label})" for b in f.at_bound_) or "-",
                     "n_warnings": len(f.warnings_)})
    return pd.DataFrame(rows)


__all__ = ["FAMILIES", "LawFamily", "ChinchillaFamily", "GadreFamily", "KaplanFamily", "FarseerFamily",
           "DataConstrainedFamily", "make_family", "family_table"]
