"""The delta-method (Laplace) covariance of a Chinchilla fit's log predictions: what the adaptive selector scores
candidates with (analysis/design.py; docs/SCIENCE.md, "Adaptive designs").

At the fit's point theta = [log A, log B, alpha, beta, log E] (ParametricFit.theta_), log L(N, D) =
logsumexp(log A - alpha log N, log B - beta log D, log E) has the gradient J = [w_A, w_B, -w_A log N, -w_B log D,
w_E] (w the softmax weights of the three terms). With the fitted runs' gradients J_r and a run noise variance s2,

    Sigma = (J_r' J_r / s2 + diag(1 / PRIOR_SD^2))^-1,    Cov(f_i, f_j) = J_i Sigma J_j'.

Unlike a covariance estimated from a few dozen bootstrap refits it has no Monte-Carlo noise, so two candidates
of near-equal value are not ranked by chance. The weak prior (PRIOR_SD) keeps Sigma finite when a handful of
runs leaves a direction unconstrained; it does not move the fit.
"""
from __future__ import annotations

import numpy as np

from .parametric import _named

PRIOR_SD = np.array([3.0, 3.0, 0.5, 0.5, 3.0])  # log A, log B, alpha, beta, log E: sd of a weak Gaussian prior
_STEP = 1e-5  # central differences (log N_opt; the data-constrained law's gradients, analysis/design_bias.py)


def log_loss_gradient(theta: np.ndarray, params, tokens) -> np.ndarray:
    """(n, 5) gradient of log L at (params, tokens) with respect to theta."""
    logN, logD = np.log(np.asarray(params, dtype=float)), np.log(np.asarray(tokens, dtype=float))
    u_Nx3 = np.stack([theta[0] - theta[2] * logN, theta[1] - theta[3] * logD, np.full(logN.shape, theta[4])], axis=1)
    w_Nx3 = np.exp(u_Nx3 - u_Nx3.max(axis=1, keepdims=True))
    w_Nx3 /= w_Nx3.sum(axis=1, keepdims=True)
    return np.stack([w_Nx3[:, 0], w_Nx3[:, 1], -w_Nx3[:, 0] * logN, -w_Nx3[:, 1] * logD, w_Nx3[:, 2]], axis=1)


def central_gradient(f, theta: np.ndarray) -> np.ndarray:
    """(rows, len(theta)) central differences of f, a vector (or scalar) function of theta."""
    cols = [np.atleast_1d((f(theta + e) - f(theta - e)) / (2 * _STEP)) for e in np.eye(theta.size) * _STEP]
    return np.stack(cols, axis=1)


def log_n_opt_gradient(theta: np.ndarray, compute: float) -> np.ndarray:
    """(1, 5) gradient of log N_opt(C) = log G + a log(C / 6) with respect to theta (central differences)."""
    def log_n_opt(t):
        p = _named(t)
        return np.log(p["G"]) + p["a"] * np.log(compute / 6)

    return central_gradient(log_n_opt, np.asarray(theta, dtype=float))


def parameter_cov(fit, s2: float) -> np.ndarray:
    """Sigma: the Laplace covariance of theta given the fitted runs and run noise variance s2."""
    theta = np.asarray(fit.theta_, dtype=float)
    J_r = log_loss_gradient(theta, fit.data_["params"], fit.data_["tokens"])
    return np.linalg.pinv(J_r.T @ J_r / s2 + np.diag(1.0 / PRIOR_SD**2))


def joint_cov(fit, s2: float, params, tokens, target_gradient: np.ndarray) -> np.ndarray:
    """Covariance of [log L at (params, tokens), the targets whose gradients are `target_gradient` (T, 5)]."""
    theta = np.asarray(fit.theta_, dtype=float)
    J = np.vstack([log_loss_gradient(theta, params, tokens), target_gradient])
    return J @ parameter_cov(fit, s2) @ J.T
