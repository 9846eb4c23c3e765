"""Huber regression of log-loss on a sum of power terms: the numerical core of every offset power law.

For k variables x_j the model is L_hat = exp(e) + sum_j exp(c_j) * x_j^(-p_j), written in log space as

    log L_hat = LSE(c_1 - p_1 log x_1, ..., c_k - p_k log x_k, e)          (Hoffmann et al. 2022, eq. 10)

with theta = [c_1..c_k, p_1..p_k, e]. The objective is the Huber loss of (log L_hat - log L), weighted per
point and SUMMED over points. Summing matters: a mean-reduced Huber objective with delta ~ 1e-3 is so small
(~1e-5) that L-BFGS-B's tolerances, which are absolute below 1, declare convergence after a few steps.
Point weights are integer multiplicities in a bootstrap, so a resample never copies the data.

Everything is vectorised over points; `objective_batch` is also vectorised over parameter vectors, which is
how the whole initialisation grid is scored in one pass.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

DEFAULT_DELTA = 1e-3

# Log-coefficient, exponent and log-offset ranges of the Hoffmann et al. / Besiroglu et al. grid.
GRID_LOG_COEF = np.arange(0.0, 25.1, 5.0)
GRID_EXPONENT = np.arange(0.0, 2.01, 0.5)
GRID_LOG_OFFSET = np.arange(-1.0, 1.01, 0.5)

# Exponents live in [0, 5]; the log-offset e may sink to -20 (E ~ 2e-9, i.e. "no irreducible term").
BOUND_LOG_COEF = (-30.0, 150.0)
BOUND_EXPONENT = (0.0, 5.0)
BOUND_LOG_OFFSET = (-20.0, 10.0)
# Centred log-coefficients (log of a term at the data's mean point) need only a generous box.
BOUND_LOG_COEF_CENTRED = (-300.0, 300.0)

# Below 1 L-BFGS-B's ftol is an absolute change, so it is set far below the objective's scale.
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-11, "maxiter": 2000, "maxls": 40}


def n_params(k: int) -> int:
    return 2 * k + 1


def bounds(k: int) -> list[tuple[float, float]]:
    return [BOUND_LOG_COEF] * k + [BOUND_EXPONENT] * k + [BOUND_LOG_OFFSET]


def predict_log(theta: np.ndarray, logx: np.ndarray) -> np.ndarray:
    """log L_hat for one parameter vector theta (P,) at points logx (k, n): one row per variable."""
    k = logx.shape[0]
    z = np.empty((k + 1, logx.shape[1]))
    z[:k] = theta[:k, None] - logx * theta[k : 2 * k, None]
    z[k] = theta[2 * k]
    m = z.max(axis=0)
    return m + np.log(np.exp(z - m).sum(axis=0))


def objective(theta, logx, y, w, delta=DEFAULT_DELTA, reduction="sum"):
    """Huber objective and its exact gradient for one theta; logx is (k, n).

    `reduction='mean'` divides by the total weight; it exists to demonstrate the early-stopping pitfall.
    """
    k = logx.shape[0]
    z = np.empty((k + 1, logx.shape[1]))
    np.multiply(logx, -theta[k : 2 * k, None], out=z[:k])
    z[:k] += theta[:k, None]
    z[k] = theta[2 * k]
    m = z.max(axis=0)
    z -= m
    s = np.exp(z, out=z)
    tot = s.sum(axis=0)
    r = np.log(tot)
    r += m
    r -= y
    # Huber(r) = c^2/2 + delta (|r| - |c|) with c = clip(r, -delta, delta); its slope is c.
    c = np.clip(r, -delta, delta)
    f = float(np.dot(w, 0.5 * c * c + delta * (np.abs(r) - np.abs(c))))
    g = w * c / tot  # slope times 1/sum(exp): with s it gives d f / d z_j = slope * softmax_j
    # Elementwise products and sums, not matmul: tiny BLAS calls may spin up OpenBLAS threads, which
    # oversubscribes the cores when bootstrap workers run in parallel.
    sg = s * g
    grad = np.empty(2 * k + 1)
    grad[:k] = sg[:k].sum(axis=1)
    grad[k : 2 * k] = -(sg[:k] * logx).sum(axis=1)
    grad[2 * k] = sg[k].sum()
    if reduction == "mean":
        total = float(w.sum())
        return f / total, grad / total
    return f, grad


def objective_batch(thetas, logx, y, w, delta=DEFAULT_DELTA, chunk_elems=4_000_000):
    """Objective values for many parameter vectors thetas (S, P) at once, chunked to bound memory."""
    thetas = np.atleast_2d(thetas)
    k, n = logx.shape
    out = np.empty(thetas.shape[0])
    step = max(1, chunk_elems // (n * (k + 1)))
    for lo in range(0, thetas.shape[0], step):
        t = thetas[lo : lo + step]
        z = np.empty((t.shape[0], k + 1, n))
        z[:, :k] = t[:, :k, None] - logx[None] * t[:, k : 2 * k, None]
        z[:, k] = t[:, 2 * k, None]
        m = z.max(axis=1)
        z -= m[:, None]
        np.exp(z, out=z)
        r = np.log(z.sum(axis=1)) + m - y
        c = np.clip(r, -delta, delta)
        out[lo : lo + step] = (0.5 * c * c + delta * (np.abs(r) - np.abs(c))) @ w
    return out


def initialisation_grid(k: int) -> np.ndarray:
    """Every combination of the grid values: 6^k * 5^k * 5 rows (4,500 for L(N, D), 150 for one variable)."""
    axes = [GRID_LOG_COEF] * k + [GRID_EXPONENT] * k + [GRID_LOG_OFFSET]
    return np.array(list(itertools.product(*axes)), dtype=float)


def screen_grid(grid, logx, y, w, delta=DEFAULT_DELTA) -> np.ndarray:
    """The best-scoring grid row for every distinct exponent combination.

    Exponents decide which basin L-BFGS-B falls into; coefficients only set the level, which scoring the whole
    grid in one vectorised pass chooses well. So L-BFGS-B runs from 5^k starts (25 for L(N, D)) that cover every
    exponent pair of the grid, not from all 4,500 rows.
    """
    k = logx.shape[0]
    return best_per_group(grid, objective_batch(grid, logx, y, w, delta), list(range(k, 2 * k)))


def best_per_group(grid: np.ndarray, scores: np.ndarray, cols: list[int]) -> np.ndarray:
    """The best-scoring row of `grid` for every distinct combination of its columns `cols`, best first; rows
    whose score is not finite are dropped."""
    _, group = np.unique(grid[:, cols], axis=0, return_inverse=True)
    group = group.ravel()
    order = np.lexsort((scores, group))
    first = np.ones(order.size, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    best = order[first]
    best = best[np.isfinite(scores[best])]
    return grid[best[np.argsort(scores[best])]]


@dataclass(frozen=True)
class Solution:
    theta: np.ndarray
    fun: float
    nit: int
    success: bool
    message: str


def minimise(
    theta0, logx, y, w, delta=DEFAULT_DELTA, *, reduction="sum", options=None, centre=True
) -> Solution:
    """L-BFGS-B from one start with the exact gradient.

    With `centre`, it optimises c'_j = c_j - p_j mean(log x_j) against centred log x. In the raw
    parametrisation log A and alpha trade off along a long ridge (log N ~ 20), which costs L-BFGS-B many
    iterations; centred, they are nearly uncorrelated. Results are reported in the raw parametrisation.
    """
    k = logx.shape[0]
    theta0 = np.array(theta0, dtype=float)
    mu = logx.mean(axis=1) if centre else np.zeros(k)
    box = bounds(k)
    if centre:
        logx = logx - mu[:, None]
        theta0[:k] -= theta0[k : 2 * k] * mu
        box[:k] = [BOUND_LOG_COEF_CENTRED] * k
    res = minimize(
        objective,
        theta0,
        args=(logx, y, w, delta, reduction),
        jac=True,
        method="L-BFGS-B",
        bounds=box,
        options=LBFGS_OPTIONS if options is None else options,
    )
    theta = np.asarray(res.x, dtype=float).copy()
    theta[:k] += theta[k : 2 * k] * mu
    return Solution(theta, float(res.fun), int(res.nit), bool(res.success), str(res.message))


def multistart(starts, logx, y, w, delta=DEFAULT_DELTA) -> list[Solution]:
    """Run L-BFGS-B from every start; solutions sorted best first."""
    sols = [minimise(s, logx, y, w, delta) for s in np.atleast_2d(starts)]
    return sorted(sols, key=lambda s: s.fun)


def distinct(solutions: list[Solution], k: int, tol: float = 1e-2) -> list[Solution]:
    """Solutions whose exponents differ from every better one by more than tol (distinct basins)."""
    kept: list[Solution] = []
    for s in solutions:
        if all(np.max(np.abs(s.theta[k : 2 * k] - t.theta[k : 2 * k])) > tol for t in kept):
            kept.append(s)
    return kept
