"""The data-constrained law (Muennighoff et al. 2023): loss when tokens repeat and models outgrow their data.

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    D' = U + U R*_D (1 - exp(-R_D / R*_D)),   R_D = max(D / U - 1, 0)      (repeats of the U unique tokens)
    N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N)), R_N = max(N / U_N - 1, 0),  U_N = min(N, N_u(U))

A repeated token is worth less than a fresh one: the value of more repeats decays with a half-life of about
R*_D ln 2 epochs, and D' never exceeds U (1 + R*_D). Likewise parameters beyond N_u(U), the compute-optimal
size for U tokens under the law's own allocation (N_u = (alpha A / (beta B))^(1/alpha) U^(beta/alpha)), are
worth less than the first N_u: a model far too big for its data gains little from its excess parameters
(N' <= N_u (1 + R*_N)). With U >= D and N <= N_u the law is Hoffmann et al.'s L(N, D).

Fitted like Approach 3: Huber loss on log L summed over points, L-BFGS-B with the exact gradient (theta =
[log A, log B, alpha, beta, log E, log R*_D, log R*_N]), starts screened from the Hoffmann grid at several
R*_D and R*_N, and a bootstrap over points from the full-data basins. R*_D is identified only by runs that
repeat their data (D > U), R*_N only by runs larger than N_u; without them each is reported as not
determined. `two_stage=True` is the original paper's procedure: the base law (E, A, B, alpha, beta) is held
fixed (given as `base`, or fitted first to the runs that neither repeat data nor exceed N_u's scale: one
epoch or less, with their own R*_N) and only R*_D and R*_N are fitted. `excess_params=False` drops the N'
term (N' = N).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from . import diagnostics, lse_huber
from ._blas import single_threaded_blas
from .allocation import AllocationLaw
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate, parallel_map, resample_weights, split
from .errors import AnalysisError
from .inputs import average_replicates, need_points, positive

PARAMS = ("E", "A", "B", "alpha", "beta", "R_star_D", "R_star_N")
BASE = ("E", "A", "B", "alpha", "beta")
DERIVED = ("a", "b", "G")
R_STAR_STARTS = (2.0, 15.0, 100.0)
R_STAR_N_STARTS = (1.0, 5.0, 50.0)
BOUND_LOG_R_STAR = (np.log(0.05), np.log(1e4))
NO_EXCESS = np.log(1e4)  # log R*_N of a law without the parameter-excess term (never binding at real scales)
# Epochs past which a recommendation leans on the law's decay term rather than on runs that saw them.
FEW_EPOCHS = 4.0


def effective_tokens(tokens, unique_tokens, r_star) -> np.ndarray:
    """D' = U + U R* (1 - exp(-R_D / R*)), R_D = max(D / U - 1, 0)."""
    D, U = np.asarray(tokens, dtype=float), np.asarray(unique_tokens, dtype=float)
    with np.errstate(invalid="ignore"):
        R = np.maximum(D / U - 1.0, 0.0)
        boosted = np.minimum(D, U) + U * r_star * -np.expm1(-R / r_star)
    return np.where(np.isinf(U), D, boosted)  # unlimited data: every token is new


def params_for_data(p: dict, tokens) -> np.ndarray:
    """N_u(U): the compute-optimal N for U tokens under the law's allocation (alpha A/(beta B))^(1/alpha)
    U^(beta/alpha); infinite for unlimited data."""
    U = np.asarray(tokens, dtype=float)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_nu = (np.log(p["alpha"] * p["A"] / (p["beta"] * p["B"])) + p["beta"] * np.log(U)) / p["alpha"]
    return np.where(np.isinf(U), np.inf, np.exp(log_nu))


def effective_params(params, tokens, unique_tokens, p: dict) -> np.ndarray:
    """N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N)), U_N = min(N, N_u(min(U, D))), R_N = max(N / U_N - 1, 0)."""
    N = np.asarray(params, dtype=float)
    if "R_star_N" not in p:
        return N * np.ones_like(np.asarray(unique_tokens, dtype=float))
    un = np.minimum(N, params_for_data(p, np.minimum(unique_tokens, tokens)))
    with np.errstate(invalid="ignore"):
        R = np.maximum(N / un - 1.0, 0.0)
        return un + un * p["R_star_N"] * -np.expm1(-R / p["R_star_N"])


def _log_boost(R: np.ndarray, log_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """g = log(X'/U) for R >= 0 repeats (X' = D' or N'), dg/dlog R* and dg/dR."""
    s = np.exp(log_s)
    q = R / s
    decay = np.exp(-q)
    one_minus = -np.expm1(-q)
    f = s * one_minus
    g = np.log1p(f)
    dg = s * (one_minus - q * decay) / (1.0 + f)
    return g, dg, decay / (1.0 + f)


def _objective(theta, data: "_Data", w, delta, free):
    """Huber objective and exact gradient in the centred parametrisation [cA, cB, alpha, beta, e, log R*_D,
    log R*_N]; entries of the gradient outside `free` are zero (fixed parameters in a two-stage fit)."""
    cA, cB, al, be, e, lsD, lsN = theta
    al, be = max(al, 1e-9), max(be, 1e-9)  # at an exponent's bound of 0, N_u is not defined
    gD, dgD, _ = _log_boost(data.R, lsD)
    x_d = data.x_u + gD
    # Parameter excess: log N_u - mu_N, and where N > N_u, log N' = log N_u + g(R_N, R*_N).
    lnu = (np.log(al / be) + cA - cB + be * data.x_u) / al
    over = data.x_n > lnu if data.excess else np.zeros(data.x_n.shape, dtype=bool)
    R_n = np.where(over, np.expm1(np.clip(data.x_n - lnu, 0.0, 50.0)), 0.0)  # N/N_u beyond e^50 means nothing
    gN, dgN, gR = _log_boost(R_n, lsN)
    x_np = np.where(over, lnu + gN, data.x_n)
    H = np.where(over, 1.0 - gR * (R_n + 1.0), 0.0)  # d log N' / d log N_u
    z = np.vstack([cA - al * x_np, cB - be * x_d, np.full_like(x_np, e)])
    m = z.max(axis=0)
    s = np.exp(z - m)
    tot = s.sum(axis=0)
    r = np.log(tot) + m - data.y
    c = np.clip(r, -delta, delta)
    f = float(np.dot(w, 0.5 * c * c + delta * (np.abs(r) - np.abs(c))))
    sg = s * (w * c / tot)
    grad = np.array([
        (sg[0] * (1.0 - H)).sum(),
        sg[1].sum() + (sg[0] * H).sum(),
        -(sg[0] * (x_np + H * (1.0 - al * lnu) / al)).sum(),
        -(sg[1] * x_d).sum() - (sg[0] * H * (data.x_u - 1.0 / be)).sum(),
        sg[2].sum(),
        -be * (sg[1] * dgD).sum(),
        -al * (sg[0] * np.where(over, dgN, 0.0)).sum(),
    ])
    return f, np.where(free, grad, 0.0)


@dataclass
class _Data:
    x_n: np.ndarray  # log N - mu_N
    x_u: np.ndarray  # log min(U, D) - mu_U
    R: np.ndarray  # repeats R_D
    y: np.ndarray  # log L
    mu: np.ndarray = field(default_factory=lambda: np.zeros(2))
    excess: bool = True

    @classmethod
    def of(cls, N, D, U, L, excess=True) -> "_Data":
        lu = np.log(np.minimum(U, D))
        mu = np.array([np.log(N).mean(), lu.mean()])
        return cls(np.log(N) - mu[0], lu - mu[1], np.maximum(D / U - 1.0, 0.0), np.log(L), mu, excess)

    def centre(self, theta):
        t = np.array(theta, dtype=float)
        t[0] -= t[2] * self.mu[0]
        t[1] -= t[3] * self.mu[1]
        return t

    def uncentre(self, t):
        theta = np.array(t, dtype=float)
        theta[0] += theta[2] * self.mu[0]
        theta[1] += theta[3] * self.mu[1]
        return theta


def _bounds(fixed: np.ndarray | None = None):
    """Box bounds (centred); a fixed parameter's box is its own value (two-stage fits)."""
    c = lse_huber.BOUND_LOG_COEF_CENTRED
    box = [c, c, lse_huber.BOUND_EXPONENT, lse_huber.BOUND_EXPONENT, lse_huber.BOUND_LOG_OFFSET,
           BOUND_LOG_R_STAR, BOUND_LOG_R_STAR]
    if fixed is not None:
        box = [(v, v) if np.isfinite(v) else b for b, v in zip(box, fixed)]
    return box


def _minimise(theta0, data: _Data, w, delta, fixed=None):
    """L-BFGS-B from theta0 (raw parametrisation). `fixed` (raw, NaN = free) pins entries of theta."""
    t0 = np.array(theta0, dtype=float)
    free = np.ones(t0.size, dtype=bool)
    if not data.excess:
        t0[6], free[6] = NO_EXCESS, False
    if fixed is not None:
        pin = np.isfinite(fixed)
        t0[pin], free[pin] = fixed[pin], False
    tc = data.centre(t0)
    box = [(v, v) if not f else b for b, v, f in zip(_bounds(), tc, free)]
    res = minimize(_objective, tc, args=(data, w, delta, free), jac=True, method="L-BFGS-B", bounds=box,
                   options=lse_huber.LBFGS_OPTIONS)
    return data.uncentre(res.x), float(res.fun), bool(res.success), str(res.message)


def _r_star_n_starts(excess: bool) -> tuple[float, ...]:
    """Start values of R*_N: a grid with the excess term, the one value that switches it off without."""
    return R_STAR_N_STARTS if excess else (float(np.exp(NO_EXCESS)),)


def _released(N, D, U, L, w, delta, data: "_Data") -> list:
    """Fits of the full law started from the law without the excess term (its best two basins, R*_N released
    at each start value). From the Hoffmann grid alone the excess path can stall where N_u is meaningless (every
    run 'beyond' it), leaving the full law in a worse basin than the simpler law it contains."""
    plain = _Data.of(N, D, U, L, excess=False)
    base = sorted((_minimise(s, plain, w, delta) for s in _starts(N, D, U, L, delta, excess=False)),
                  key=lambda r: r[1])[:2]
    return [_minimise(np.r_[b[0][:6], np.log(rn)], data, w, delta) for b in base
            for rn in R_STAR_N_STARTS + (float(np.exp(NO_EXCESS)),)]


def _starts(N, D, U, L, delta, excess=True) -> np.ndarray:
    """Hoffmann-grid starts (best per exponent pair) screened at each R*_D start value; best five of each,
    each at every R*_N start (one start value without the excess term)."""
    grid = lse_huber.initialisation_grid(2)
    out = []
    for r0 in R_STAR_STARTS:
        logx = np.vstack([np.log(N), np.log(effective_tokens(D, U, r0))])
        best = lse_huber.screen_grid(grid, logx, np.log(L), np.ones(N.size), delta)[:5]
        for rn in _r_star_n_starts(excess):
            out += [np.r_[b, np.log(r0), np.log(rn)] for b in best]
    return np.array(out)


def _best_of(starts, data, w, delta, fixed=None) -> np.ndarray:
    best, fun = None, np.inf
    for s in starts:
        theta, f, _, _ = _minimise(s, data, w, delta, fixed)
        if np.isfinite(f) and f < fun:
            best, fun = theta, f
    return best if best is not None else np.full(len(PARAMS), np.nan)


def _named(thetas: np.ndarray, excess: bool = True) -> dict[str, np.ndarray]:
    t = np.atleast_2d(thetas)
    al, be = t[:, 2], t[:, 3]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = al + be
        G = np.exp((np.log(al) + t[:, 0] - np.log(be) - t[:, 1]) / s)
        out = {"E": np.exp(t[:, 4]), "A": np.exp(t[:, 0]), "B": np.exp(t[:, 1]), "alpha": al, "beta": be,
               "R_star_D": np.exp(t[:, 5]), "R_star_N": np.exp(t[:, 6]), "a": be / s, "b": al / s, "G": G}
    if not excess:
        del out["R_star_N"]
    return out


def loss_of(p: dict, N, D, U) -> np.ndarray:
    """The law at (N, D, U) for named parameters p (arrays broadcast: draws x points); without R_star_D (a
    plain L(N, D) fit) every token counts as new, without R_star_N every parameter does."""
    Dp = effective_tokens(D, U, p["R_star_D"]) if "R_star_D" in p else np.asarray(D, float) * np.ones_like(U)
    Np = effective_params(N, D, U, p)
    return p["E"] + p["A"] * Np ** -p["alpha"] + p["B"] * Dp ** -p["beta"]


def _base_theta(base: dict) -> np.ndarray:
    """Raw theta with the base law (E, A, B, alpha, beta) pinned and R*_D, R*_N free (NaN)."""
    missing = [k for k in BASE if k not in base]
    if missing:
        raise AnalysisError(f"the base law for a two-stage fit needs {list(BASE)}; missing {missing}")
    v = {k: float(base[k]) for k in BASE}
    if not all(np.isfinite(x) and x > 0 for x in v.values()):
        raise AnalysisError(f"the base law's E, A, B, alpha and beta must be positive numbers; got {v}")
    return np.array([np.log(v["A"]), np.log(v["B"]), v["alpha"], v["beta"], np.log(v["E"]), np.nan, np.nan])


@dataclass
class _Procedure:
    """How one set of weights becomes a theta: jointly, or in two stages (base law first, then R*)."""

    data: _Data
    starts: np.ndarray
    delta: float
    base: np.ndarray | None = None  # pinned base law (two stages, given)
    base_data: _Data | None = None  # runs of one epoch or less (two stages, base fitted here)
    base_rows: np.ndarray | None = None
    base_starts: np.ndarray | None = None

    def __call__(self, w: np.ndarray) -> np.ndarray:
        fixed = self.base
        if self.base_data is not None:
            b = _best_of(self.base_starts, self.base_data, w[self.base_rows], self.delta)
            fixed = np.r_[b[:5], np.nan, np.nan]
        return _best_of(self.starts, self.data, w, self.delta, fixed)


def _boot_procedure(args) -> np.ndarray:
    procedure, weights = args
    with single_threaded_blas():
        return np.array([procedure(w) for w in weights]).reshape(len(weights), -1)


class DataConstrainedFit:
    """`fit(params, tokens, unique_tokens, loss)`, then `predict(N, D, U)`, `estimates_` (R_star_D and
    R_star_N among them), `allocate(budget, unique_tokens)`; `allocation_` is the unconstrained (unlimited
    data) law. `excess_params=False` fits without the R*_N term; `two_stage=True` holds the base law fixed
    (`base`: a dict of E, A, B, alpha, beta, e.g. a published law; without it, fitted to the runs of one
    epoch or less) and fits only R*_D and R*_N, as Muennighoff et al. did."""

    approach = 3
    law = "data_constrained"

    def __init__(self, *, delta: float = lse_huber.DEFAULT_DELTA, n_boot: int = 1000, level: float = DEFAULT_LEVEL,
                 seed: int = 0, n_jobs: int | None = 1, boot_starts: int = 2, excess_params: bool = True,
                 two_stage: bool = False, base: dict | None = None):
        self.delta, self.n_boot, self.level, self.seed = delta, n_boot, level, seed
        self.n_jobs, self.boot_starts = n_jobs, boot_starts
        self.excess_params, self.two_stage, self.base = excess_params, two_stage, base
        if base is not None and not two_stage:
            raise AnalysisError("a base law is only used by a two-stage fit: pass two_stage=True with base")

    @property
    def param_names(self) -> tuple[str, ...]:
        return PARAMS if self.excess_params else PARAMS[:-1]

    def fit(self, params, tokens, unique_tokens, loss, *, budget=None, seed_col=None, lr=None):
        N, D = positive(params, "params"), positive(tokens, "tokens")
        U, L = positive(unique_tokens, "unique_tokens"), positive(loss, "loss")
        if not (N.size == D.size == U.size == L.size):
            raise AnalysisError("params, tokens, unique_tokens and loss must have the same length")
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        keep, noise, msgs = average_replicates({"N": N, "D": D, "U": U}, L, seed=seed_col, lr=lr)
        self.notes_ += msgs
        N, D, U, L = N[keep], D[keep], U[keep], noise.loss
        names = self.param_names
        n_free = 2 if self.two_stage and self.base is not None else len(names)
        need_points(N.size, n_free + 1, f"the data-constrained law ({n_free} free parameters)")
        epochs = D / U
        self.data_ = pd.DataFrame({"params": N, "tokens": D, "unique_tokens": U, "epochs": epochs, "loss": L})
        if budget is not None:
            self.data_["budget"] = np.asarray(budget, dtype=float)[keep]
        self.max_epochs_seen_ = float(epochs.max())
        self.repeated_runs_ = int((epochs > 1.0 + 1e-9).sum())

        data = _Data.of(N, D, U, L, excess=self.excess_params)
        procedure, best = self._procedure(data, N, D, U, L)
        self.theta_ = best[0]
        self.objective_ = float(best[1])  # the Huber sum at the point (for comparing nested fits)
        boot = np.empty((0, len(PARAMS)))
        if self.n_boot > 0:
            weights = resample_weights(N.size, self.n_boot, np.random.default_rng(self.seed))
            boot = np.vstack(parallel_map(_boot_procedure, [(procedure, wc) for wc in split(weights, self.n_jobs)],
                                          self.n_jobs))
        self.boot_thetas_ = boot
        point = {k: float(v[0]) for k, v in _named(self.theta_, self.excess_params).items()}
        draws = _named(boot, self.excess_params) if len(boot) else None
        self.params_ = {k: point[k] for k in names}
        self.estimates_: dict[str, Estimate] = {
            k: estimate(point[k], None if draws is None else draws[k], self.level) for k in names + DERIVED}
        self.allocation_ = self._unconstrained(point, draws)
        self.n_points_ = int(N.size)
        self.excess_runs_ = int((N > params_for_data(self.params_, np.minimum(U, D)) * (1 + 1e-9)).sum()) \
            if self.excess_params else 0
        how = ("two stages (base law " + ("given" if self.base is not None else "fitted to the runs of one epoch or "
               "less") + ", then R_star_D and R_star_N)") if self.two_stage else "jointly"
        self.notes_.append(
            f"data-constrained law (Muennighoff et al. 2023) fitted {how} to {N.size} points, {self.repeated_runs_} "
            f"of them repeating their data (up to {self.max_epochs_seen_:.3g} epochs)"
            + (f", {self.excess_runs_} larger than the compute-optimal size for their data" if self.excess_params
               else ", without the parameter-excess term") + f"; Huber (delta={self.delta:g}) on log L")
        self._diagnose(best, N, D)
        return self

    def _procedure(self, data: _Data, N, D, U, L) -> tuple[_Procedure, tuple]:
        """The full-data fit and the procedure each bootstrap resample repeats."""
        w = np.ones(N.size)
        if not self.two_stage:
            with single_threaded_blas():
                sols = [_minimise(s, data, w, self.delta) for s in _starts(N, D, U, L, self.delta, self.excess_params)]
                if self.excess_params:
                    sols += _released(N, D, U, L, w, self.delta, data)
            sols.sort(key=lambda s: s[1])
            best = sols[0]
            near = [s[0] for s in sols if s[1] <= 1.5 * best[1] + 1e-12]
            distinct = []
            for t in near:
                if all(np.max(np.abs(t[2:4] - d[2:4])) > 1e-2 or np.max(np.abs(t[5:] - d[5:])) > 0.1
                       for d in distinct):
                    distinct.append(t)
            self.starts_ = np.array(distinct[: max(1, self.boot_starts)])
            return _Procedure(data, self.starts_, self.delta), best
        r_starts = np.array([[0, 0, 1, 1, 0, np.log(rd), np.log(rn)] for rd in R_STAR_STARTS
                             for rn in _r_star_n_starts(self.excess_params)])
        if self.base is not None:
            procedure = _Procedure(data, r_starts, self.delta, base=_base_theta(self.base))
        else:
            rows = D <= U * (1 + 1e-9)
            if rows.sum() < len(BASE) + 1 or np.unique(N[rows]).size < 3 or np.unique(D[rows]).size < 3:
                raise AnalysisError(
                    f"a two-stage fit without a given base law fits it to the runs of one epoch or less: {int(rows.sum())} "
                    "such runs here, with fewer than 3 distinct sizes or token counts; add single-epoch runs or "
                    "pass the base law (E, A, B, alpha, beta)")
            # Single-epoch runs still pay for parameters beyond their data's optimal size: stage 1 fits the
            # base law with the excess term (R*_N there is refitted in stage 2 with all runs).
            base_data = _Data.of(N[rows], D[rows], U[rows], L[rows], excess=self.excess_params)
            base_starts = _starts(N[rows], D[rows], U[rows], L[rows], self.delta, self.excess_params)[::3][:8]
            procedure = _Procedure(data, r_starts, self.delta, base_data=base_data, base_rows=rows,
                                   base_starts=base_starts)
        with single_threaded_blas():
            theta = procedure(w)
        fixed = np.r_[theta[:5], np.nan, np.nan]
        best = _minimise(theta, data, w, self.delta, fixed)
        # Resamples start from the full-data R* and from the middle of the start grid.
        procedure.starts = self.starts_ = np.vstack([theta, r_starts[len(r_starts) // 2]])
        return procedure, best

    def _unconstrained(self, point, draws) -> AllocationLaw:
        def law(p):
            lg = np.log(p["G"])
            return np.column_stack([lg - p["a"] * np.log(6), p["a"], -lg - p["b"] * np.log(6), p["b"]])

        pt = law({k: np.atleast_1d(v) for k, v in point.items()})[0]
        return AllocationLaw(*pt, draws=law(draws) if draws is not None else np.empty((0, 4)), level=self.level)

    def _diagnose(self, best, N, D) -> None:
        w = self.warnings_
        if self.repeated_runs_ == 0:
            w.append("no run repeats its data (every D <= U): R_star_D is not determined by these runs; add runs "
                     "on a fraction of the data trained for several epochs")
        elif self.max_epochs_seen_ < 2:
            w.append(f"the most repeated run saw only {self.max_epochs_seen_:.3g} epochs: R_star_D is weakly "
                     "determined")
        lo, hi = BOUND_LOG_R_STAR
        if self.repeated_runs_ and not lo + 1e-3 < best[0][5] < hi - 1e-3:
            w.append(f"R_star_D = {np.exp(best[0][5]):.3g} is at its bound: repeated tokens look "
                     + ("worthless" if best[0][5] <= lo + 1e-3 else "as good as new") + " in these runs")
        if self.excess_params:
            ls_n = best[0][6]
            if self.excess_runs_ == 0:
                w.append("no run is larger than the compute-optimal size for its data (N <= N_u(U)): R_star_N is not "
                         "determined by these runs; add larger models on the smallest data fractions")
            elif not lo + 1e-3 < ls_n < hi - 1e-3:
                w.append(f"R_star_N = {np.exp(ls_n):.3g} is at its bound: parameters beyond the data's optimal size "
                         + ("add nothing" if ls_n <= lo + 1e-3 else "look as good as any") + " in these runs")
        if N.size < diagnostics.FEW_POINTS:
            w.append(f"only {N.size} points for {len(self.param_names)} parameters: the fit is fragile")
        w += self._overfitting()
        if not best[2]:
            w.append(f"L-BFGS-B did not report convergence: {best[3]}")
        w += diagnostics.wide_exponents(self.estimates_)
        w += diagnostics.wide_factors(self.estimates_, ("E", "alpha", "beta", "R_star_D")
                                      + (("R_star_N",) if self.excess_params and self.excess_runs_ else ()))
        n_failed = int(np.isnan(self.boot_thetas_).any(axis=1).sum()) if len(self.boot_thetas_) else 0
        w += diagnostics.failed_resamples(n_failed, self.n_boot)

    def _overfitting(self) -> list[str]:
        """Runs where a larger model reached a higher loss on the same tokens and data: overfitting, which the
        law (loss falling in N at any D and U) cannot describe; their residuals are then systematic."""
        d = self.data_
        worse = []
        for (_, U), g in d.groupby(["tokens", "unique_tokens"]):
            g = g.sort_values("params")
            if len(g) >= 2 and (np.diff(g["loss"].to_numpy()) > 0.01 * g["loss"].to_numpy()[:-1]).any():
                worse.append(float(g["epochs"].iloc[0]))
        if not worse:
            return []
        return [f"at {len(worse)} (D, U) point(s) (from {min(worse):.3g} epochs) a larger model reached a higher "
                "loss than a smaller one: overfitting from repeated data, which this law (whose loss never rises with "
                "N, R_star_N only slows its fall) does not model; treat "
                "recommendations at that many epochs as optimistic"]

    # -- model -----------------------------------------------------------------------------------------
    def predict(self, params, tokens, unique_tokens=np.inf) -> np.ndarray:
        return loss_of(self.params_, np.asarray(params, float), np.asarray(tokens, float),
                       np.asarray(unique_tokens, float))

    def predict_draws(self, params, tokens, unique_tokens=np.inf, *, paired: bool = False) -> np.ndarray:
        d = _named(self.boot_thetas_, self.excess_params)
        N, D = np.atleast_1d(np.asarray(params, float)), np.atleast_1d(np.asarray(tokens, float))
        U = np.broadcast_to(np.asarray(unique_tokens, float), D.shape)
        if paired:
            return loss_of(d, N, D, U)
        return loss_of({k: v[:, None] for k, v in d.items()}, N[None], D[None], U[None])

    def param_draws(self) -> dict[str, np.ndarray] | None:
        if not len(self.boot_thetas_):
            return None
        d = _named(self.boot_thetas_, self.excess_params)
        ok = np.all([np.isfinite(d[k]) for k in self.param_names], axis=0)
        return {k: d[k][ok] for k in self.param_names}

    def n_opt(self, compute) -> np.ndarray:
        return self.allocation_.n_opt(compute)

    def d_opt(self, compute) -> np.ndarray:
        return self.allocation_.d_opt(compute)

    def residuals(self) -> pd.DataFrame:
        out = self.data_.copy()
        out["compute"] = 6 * out["params"] * out["tokens"]
        out["predicted"] = self.predict(out["params"], out["tokens"], out["unique_tokens"])
        out["residual"] = np.log(out["loss"]) - np.log(out["predicted"])
        return out

    def allocate(self, budget: float, unique_tokens: float, *, flops_per_token=None) -> "RepeatAllocation":
        """Compute-optimal N, D and epochs at `budget` FLOPs with `unique_tokens` of data: repeat or grow."""
        return allocate(self, budget, unique_tokens, flops_per_token=flops_per_token)


def _argmin_on_line(p: dict, budget: float, U: float, fpt, lo: float, hi: float, n_grid: int = 400):
    """N minimising L(N, C / fpt(N), U) for each row of p (arrays of draws); two passes of a log grid."""
    rows = np.atleast_1d(p["E"]).size
    lo_b, hi_b = np.full(rows, np.log(lo)), np.full(rows, np.log(hi))
    for _ in range(3):
        x = lo_b[:, None] + (hi_b - lo_b)[:, None] * np.linspace(0, 1, n_grid)[None]
        N = np.exp(x)
        L = loss_of({k: np.atleast_1d(v)[:, None] for k, v in p.items()}, N, budget / fpt(N), U)
        L = np.where(np.isfinite(L), L, np.inf)
        i = np.argmin(L, axis=1)
        step = (hi_b - lo_b) / (n_grid - 1)
        centre = x[np.arange(rows), i]
        lo_b, hi_b = centre - 2 * step, centre + 2 * step
    return np.exp(centre)


@dataclass(frozen=True)
class RepeatAllocation:
    budget: float
    unique_tokens: float
    n_opt: Estimate
    d_opt: Estimate
    epochs: Estimate
    loss: Estimate
    loss_one_epoch: float  # predicted loss of the best allocation that never repeats (D <= U)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "available_tokens": self.unique_tokens, "N": self.n_opt.to_dict(),
                "D": self.d_opt.to_dict(), "epochs": self.epochs.to_dict(), "loss": self.loss.to_dict(),
                "loss_without_repeats": _num(self.loss_one_epoch), "notes": list(self.notes),
                "warnings": list(self.warnings)}


def _num(x):
    return float(x) if np.isfinite(x) else None


def allocate(fit: DataConstrainedFit, budget: float, unique_tokens: float, *, flops_per_token=None) -> RepeatAllocation:
    """Minimise the fitted L(N, D, U) on the line fpt(N) D = C (fpt = 6N unless given), per bootstrap draw."""
    if not np.isfinite(budget) or budget <= 0:
        raise AnalysisError(f"budget must be a positive number of FLOPs; got {budget!r}")
    if not np.isfinite(unique_tokens) or unique_tokens <= 0:
        raise AnalysisError(f"available tokens must be a positive number; got {unique_tokens!r}")
    fpt = flops_per_token or (lambda N: 6.0 * N)
    n_free = float(fit.allocation_.n_opt(budget))
    lo, hi = n_free / 1e4, n_free * 1e4
    point = {k: np.atleast_1d(v) for k, v in fit.params_.items()}
    n0 = float(_argmin_on_line(point, budget, unique_tokens, fpt, lo, hi)[0])
    d0 = budget / float(fpt(n0))
    l0 = float(loss_of(fit.params_, n0, d0, unique_tokens))
    draws = fit.param_draws()
    nd = dd = ld = None
    if draws is not None:
        nd = _argmin_on_line(draws, budget, unique_tokens, fpt, lo, hi)
        dd = budget / fpt(nd)
        ld = loss_of(draws, nd, dd, unique_tokens)
    # The best allocation that never repeats: the unconstrained optimum when it fits in U, else D = U.
    nu = _argmin_on_line(point, budget, np.inf, fpt, lo, hi)[0]
    du = budget / float(fpt(nu))
    if du > unique_tokens:
        du = unique_tokens
        nu = _solve_n(budget, du, fpt, lo, hi)
    l_one = float(loss_of(fit.params_, nu, du, np.inf))
    lv = fit.level
    epochs = d0 / unique_tokens
    notes, warns = [], []
    if epochs > 1:
        notes.append(f"repeat the data: {epochs:.3g} epochs over {unique_tokens:.3g} unique tokens predict loss "
                     f"{l0:.4g}, against {l_one:.4g} for the best allocation that never repeats (a larger model on "
                     "one pass)")
    else:
        notes.append("one pass is enough: the compute-optimal D fits in the unique tokens available")
    if epochs > fit.max_epochs_seen_ * 1.05 and epochs > 1:
        warns.append(f"the recommendation implies {epochs:.3g} epochs, more than any fitted run saw "
                     f"({fit.max_epochs_seen_:.3g}): the decay of repeated tokens is extrapolated")
    if epochs > FEW_EPOCHS and fit.repeated_runs_ == 0:
        warns.append(f"the recommendation implies {epochs:.3g} epochs but no fitted run repeated its data: "
                     "R_star_D is a guess here; add repeated-data runs before trusting it")
    return RepeatAllocation(
        budget=float(budget), unique_tokens=float(unique_tokens),
        n_opt=estimate(n0, nd, lv), d_opt=estimate(d0, dd, lv),
        epochs=estimate(epochs, None if dd is None else dd / unique_tokens, lv),
        loss=estimate(l0, ld, lv), loss_one_epoch=l_one, notes=notes, warnings=warns)


def _solve_n(budget, tokens, fpt, lo, hi) -> float:
    """N with fpt(N) * tokens = budget (fpt increasing), by bisection in log N."""
    a, b = np.log(lo), np.log(hi)
    for _ in range(200):
        m = 0.5 * (a + b)
        if float(fpt(np.exp(m))) * tokens > budget:
            b = m
        else:
            a = m
    return float(np.exp(0.5 * (a + b)))
