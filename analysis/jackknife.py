"""Delete-one-group jackknife, turned into draws that the rest of analysis/ uses like bootstrap draws.

A bootstrap of runs sees run-to-run noise but not that whole budgets sit off the law together (one tokenizer
change, one learning-rate rule that suits some sizes better). Refitting once without each budget sees both:
the jackknife covariance V = (G-1)/G sum_k (theta_k - mean)(theta_k - mean)^T is the variance of the fit across
the budgets it was made from. Draws theta = point + z / sqrt(u), z ~ Normal(0, V), u ~ chi2(G-1)/(G-1), are a
multivariate t with G - 1 degrees of freedom (drawn as weights on the replicates, so that draws of several
quantities stay paired): the percentile interval of any linear function of theta (log
N_opt at any compute, a prediction's log-linear terms) is then that function's jackknife t interval, and
nonlinear ones (a = beta/(alpha+beta)) get its delta-method counterpart.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MIN_GROUPS = 5  # below this a t with G - 1 df is too wide to use, and the run bootstrap is kept
MIN_DRAWS = 2000  # t draws are free (no refits): at least this many, so percentile ends do not jitter


def replicates(groups: np.ndarray, refit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(G, p) fits, the k-th without the rows of the k-th finite group label; rows with a NaN label (ladder
    runs without a budget) stay in every fit."""
    groups = np.asarray(groups, dtype=float)
    labels = np.unique(groups[np.isfinite(groups)])
    return np.array([refit(groups != g) for g in labels])


def draw_weights(n_reps: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n_draws, n_reps) weights W such that point + W @ (reps - mean) are multivariate-t draws with the jackknife
    covariance of reps and n_reps - 1 df: z = sqrt((G-1)/G) sum_k xi_k dev_k with xi ~ Normal(0, 1) has
    covariance V exactly. The same W applied to the replicates of any quantity gives draws paired draw by draw
    (the law's allocation and its parameters move together, as a bootstrap resample's would)."""
    G = n_reps
    xi = rng.standard_normal((n_draws, G))
    u = rng.chisquare(max(G - 1, 1), size=n_draws) / max(G - 1, 1)
    return np.sqrt((G - 1) / G) * xi / np.sqrt(u)[:, None]


def t_draws(point: np.ndarray, reps: np.ndarray, weights: np.ndarray,
            bounds: list[tuple[float, float]] | None = None) -> np.ndarray:
    """(n_draws, p) draws point + weights @ (reps - mean) (see draw_weights); `bounds` clip each coordinate."""
    point = np.asarray(point, dtype=float)
    draws = point[None, :] + weights @ (reps - reps.mean(axis=0))
    if bounds is not None:
        lo, hi = np.array(bounds, dtype=float).T
        draws = np.clip(draws, lo, hi)
    return draws


def n_groups(groups) -> int:
    if groups is None:
        return 0
    g = np.asarray(groups, dtype=float)
    return int(np.unique(g[np.isfinite(g)]).size)
