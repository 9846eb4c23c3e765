"""Multi-start fit of an offset power sum with bootstrap: the engine behind ParametricFit and OffsetPowerLaw.

Full data: the whole initialisation grid is scored in one vectorised pass, L-BFGS-B runs from the best start
of every exponent combination, the lowest objective wins. Bootstrap resamples start from the full-data optimum
and from the other distinct basins whose full-data objective is close to the best (a resample moves the
optimum a little, so it rarely jumps to a basin that fitted the full data much worse); each resample keeps
the best of its starts. Resamples can be spread over processes; results do not depend on how.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import lse_huber
from ._blas import single_threaded_blas
from .bootstrap import parallel_map, resample_weights, split

# A basin joins the bootstrap starts when its full-data objective is within this factor of the best.
BASIN_FACTOR = 1.5


@dataclass
class PowerSumResult:
    theta: np.ndarray
    fun: float
    solutions: list = field(default_factory=list)  # distinct basins, best first
    boot_thetas: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    boot_starts: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    n_failed: int = 0
    converged: bool = True
    message: str = ""


def _best_of(starts, logx, y, w, delta) -> np.ndarray:
    best = None
    for s in starts:
        sol = lse_huber.minimise(s, logx, y, w, delta)
        if np.isfinite(sol.fun) and (best is None or sol.fun < best.fun):
            best = sol
    return best.theta if best is not None else np.full(starts.shape[1], np.nan)


def _boot_chunk(args) -> np.ndarray:
    starts, logx, y, weights, delta = args
    with single_threaded_blas():
        return np.array([_best_of(starts, logx, y, w, delta) for w in weights]).reshape(len(weights), -1)


def fit_power_sum(
    logx: np.ndarray,
    y: np.ndarray,
    *,
    delta: float = lse_huber.DEFAULT_DELTA,
    n_boot: int = 1000,
    seed: int = 0,
    n_jobs: int | None = 1,
    boot_starts: int = 3,
    starts: np.ndarray | None = None,
) -> PowerSumResult:
    """Fit log L = LSE(c_j - p_j log x_j, e) to y = log L; logx is (k, n)."""
    logx = np.ascontiguousarray(logx, dtype=float)
    y = np.asarray(y, dtype=float)
    k, n = logx.shape
    w = np.ones(n)
    if starts is None:
        starts = lse_huber.screen_grid(lse_huber.initialisation_grid(k), logx, y, w, delta)
    with single_threaded_blas():
        sols = lse_huber.distinct(lse_huber.multistart(starts, logx, y, w, delta), k)
    best = sols[0]
    near = [s.theta for s in sols if s.fun <= BASIN_FACTOR * best.fun + 1e-12][: max(1, boot_starts)]
    bstarts = np.array(near)
    boot = np.empty((0, 2 * k + 1))
    if n_boot > 0:
        weights = resample_weights(n, n_boot, np.random.default_rng(seed))
        chunks = [(bstarts, logx, y, wc, delta) for wc in split(weights, n_jobs)]
        boot = np.vstack(parallel_map(_boot_chunk, chunks, n_jobs))
    n_failed = int(np.isnan(boot).any(axis=1).sum()) if boot.size else 0
    return PowerSumResult(
        theta=best.theta,
        fun=best.fun,
        solutions=sols,
        boot_thetas=boot,
        boot_starts=bstarts,
        n_failed=n_failed,
        converged=best.success,
        message=best.message,
    )


def refit(logx, y, starts, delta=lse_huber.DEFAULT_DELTA, weights=None) -> np.ndarray:
    """Best theta from the given starts (e.g. a previous fit's basins): cheap refits for diagnostics."""
    logx = np.ascontiguousarray(logx, dtype=float)
    w = np.ones(logx.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    with single_threaded_blas():
        return _best_of(np.atleast_2d(starts), logx, np.asarray(y, dtype=float), w, delta)
