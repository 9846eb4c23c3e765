"""A bias-aware design criterion: the target's expected squared error when the law is wrong by a smooth
discrepancy, not only its variance inside the law (analysis/design.py, scoring "bias"; docs/SCIENCE.md).

The variance criteria (bootstrap, delta) value a run by how much it narrows the fitted law's parameters. On real
grids the law is misspecified and the fit's extrapolation error is mostly bias; a design that piles its runs where
the law's parameters are cheapest to pin down (many small runs) inherits the most bias. Box and Draper (1959) met
the same trade-off in response surfaces: when the model is inadequate, the design minimising mean squared error
spreads its runs more than the variance-optimal one.

Model: the observed log loss at x = (log10 N, log10 D) is f(x; theta) + delta(x) + eps, with eps ~ N(0, s2) per
run and delta a Gaussian process, k(x, x') = ratio s2 exp(-|x - x'|^2 / (2 ell^2)) (ell in decades), theta under
the delta criterion's weak prior, precision L = diag(1 / PRIOR_SD^2). Linearised (analysis/delta_cov.py: J the
gradient of log L in theta), the posterior mean's error is M (J_R' (delta_R + eps_R) / s2 + L (mu - theta)) with
M = (J_R' J_R / s2 + L)^-1. With G the targets' gradients and P = G M, the error of the log targets is that times G
minus delta_T (delta_T only for a planned run's loss; an N_opt target is a property of the law, so only the bias
through the fit counts), and

    MSE(R) = tr[P (Q / s2^2 + V / s2 + L) P'] - 2 tr[P W] / s2 + tr K_TT,

Q = J_R' K_RR J_R, V = J_R' J_R, W = J_R' K_RT. A candidate's gain is MSE(R) - MSE(R + c), each a p x p update
(p = 5; 7 for the data-constrained law below), so scoring every candidate costs O(candidates). With ratio 0 the
MSE is G M G', the delta criterion's variance, and the gains are its gains.

The same holds for the data-constrained law (Muennighoff et al.; theta adds log R*_D and log R*_N, each under a
weak prior of sd PRIOR_SD_R_STAR): its gradients are central differences of the law at theta (`jacobian`), and the
discrepancy also varies with the epochs D / min(U, D), a third coordinate (0 in log10 for a run that does not
repeat its data, so a pool without unique tokens sees the two-coordinate kernel unchanged).
"""
from __future__ import annotations

import numpy as np

from . import data_constrained as dc
from . import delta_cov

PRIOR_SD_R_STAR = 3.0  # sd of the weak prior on log R*_D and log R*_N (as on log A, log B, log E)


def _coords(params, tokens, unique=None) -> np.ndarray:
    """(log10 N, log10 D, log10 epochs), epochs = D / min(U, D): 0 without unique tokens or repeats."""
    N, D = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
    U = np.inf if unique is None else np.asarray(unique, dtype=float)
    return np.column_stack([np.log10(N), np.log10(D), np.log10(D / np.minimum(U, D))])


def prior_sd(fit) -> np.ndarray:
    """The weak prior's sd for each entry of fit.theta_."""
    if isinstance(fit, dc.DataConstrainedFit):
        return np.concatenate([delta_cov.PRIOR_SD, [PRIOR_SD_R_STAR] * 2])
    return delta_cov.PRIOR_SD


def jacobian(fit, params, tokens, unique=None, theta=None) -> np.ndarray:
    """(n, p) gradient of log L at (params, tokens[, unique]) with respect to theta (default fit.theta_): exact for a
    Chinchilla fit (delta_cov), central differences for a data-constrained one (unique None: unlimited data)."""
    theta = np.asarray(fit.theta_ if theta is None else theta, dtype=float)
    if not isinstance(fit, dc.DataConstrainedFit):
        return delta_cov.log_loss_gradient(theta, params, tokens)
    N, D = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
    U = np.full(D.shape, np.inf) if unique is None else np.asarray(unique, dtype=float)
    return delta_cov.central_gradient(lambda t: np.log(dc.loss_of(dc._named(t, fit.excess_params), N, D, U)), theta)


def n_opt_jacobian(fit, compute: float, theta=None) -> np.ndarray:
    """(1, p) gradient of log N_opt(C) = log G + a log(C / 6) with respect to theta (default fit.theta_). The
    data-constrained law's unconstrained allocation is the Chinchilla law's of its first five entries, so its
    R* columns are 0."""
    theta = np.asarray(fit.theta_ if theta is None else theta, dtype=float)
    g = delta_cov.log_n_opt_gradient(theta[:5], compute)
    return np.hstack([g, np.zeros((1, theta.size - 5))])


def _kernel(X: np.ndarray, Y: np.ndarray, var: float, ell: float) -> np.ndarray:
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(axis=-1)
    return var * np.exp(-d2 / (2 * ell**2))


class BiasVariance:
    """The criterion's state for one decision: the fitted runs R, the candidates and the targets. `gains()` is each
    candidate's MSE reduction, `observe(c)` adds candidate c to R (its loss as if seen), as a batch is picked."""

    def __init__(self, fit, params, tokens, target, s2: float, ratio: float, ell: float, unique=None, theta=None):
        self.s2, var = float(s2), float(ratio) * float(s2)
        self.prior = np.diag(1.0 / prior_sd(fit) ** 2)
        seen = fit.data_
        X_R = _coords(seen["params"], seen["tokens"], seen.get("unique_tokens"))
        X_C = _coords(params, tokens, unique)
        J_R = jacobian(fit, seen["params"], seen["tokens"], seen.get("unique_tokens"), theta)
        self.J_C = jacobian(fit, params, tokens, unique, theta)
        self.G = target.gradient(fit, theta)
        if target.kind == "loss":
            X_T = _coords(target.params, target.tokens, target.unique)
            K_RT, self.K_CT = _kernel(X_R, X_T, var, ell), _kernel(X_C, X_T, var, ell)
            self.tr_K_TT = var * len(X_T)
        else:
            K_RT, self.K_CT = np.zeros((len(X_R), 1)), np.zeros((len(X_C), 1))
            self.tr_K_TT = 0.0
        self.X_C, self.var, self.ell = X_C, var, float(ell)
        self.V = J_R.T @ J_R
        self.Q = J_R.T @ _kernel(X_R, X_R, var, ell) @ J_R
        self.W = J_R.T @ K_RT
        self.JtK = J_R.T @ _kernel(X_R, X_C, var, ell)  # (p, C): J_R' K(R, c) for each candidate

    def _mse(self, V, Q, W) -> np.ndarray:
        """MSE for stacked (..., p, p) V and Q and (..., p, T) W."""
        M = np.linalg.inv(V / self.s2 + self.prior)
        P = np.einsum("ti,...ij->...tj", self.G, M)
        quad = np.einsum("...ti,...ij,...tj->...", P, Q / self.s2**2 + V / self.s2 + self.prior, P)
        cross = np.einsum("...ti,...it->...", P, W)
        return quad - 2 * cross / self.s2 + self.tr_K_TT

    def total(self) -> float:
        """The targets' summed mean squared log error with the runs seen (and observed) so far."""
        return float(self._mse(self.V, self.Q, self.W))

    def _added(self, c):
        """V, Q, W with candidate(s) c added (c an index or an index array)."""
        j = self.J_C[c]
        a = self.JtK[:, c].T
        jj = np.einsum("...i,...j->...ij", j, j)
        V = self.V + jj
        Q = self.Q + np.einsum("...i,...j->...ij", a, j) + np.einsum("...i,...j->...ij", j, a) + self.var * jj
        W = self.W + np.einsum("...i,...t->...it", j, self.K_CT[c])
        return V, Q, W

    def gains(self) -> np.ndarray:
        return self.total() - self._mse(*self._added(np.arange(len(self.J_C))))

    def observe(self, c: int) -> None:
        self.V, self.Q, self.W = self._added(c)
        self.JtK = self.JtK + np.outer(self.J_C[c], _kernel(self.X_C[c:c + 1], self.X_C, self.var, self.ell)[0])


class AveragedBias:
    """The bias criterion averaged over the law's parameters: BiasVariance linearised at the fit's point and at up to
    `draws` of its finite bootstrap draws, each candidate's gain the mean of theirs (a pseudo-Bayesian criterion,
    Chaloner and Verdinelli 1995: where the fit is nearly degenerate, a linearisation at its point alone misses the
    directions the other basin would need)."""

    def __init__(self, fit, params, tokens, target, s2: float, ratio: float, ell: float, unique=None, draws: int = 0):
        thetas = np.asarray(getattr(fit, "boot_thetas_", np.empty((0, len(fit.theta_)))), dtype=float)
        thetas = thetas[np.all(np.isfinite(thetas), axis=1)][:draws]
        parts = [BiasVariance(fit, params, tokens, target, s2, ratio, ell, unique, theta) for theta in (None, *thetas)]
        # a draw where the law or a target is not differentiable (an exponent at 0, N_opt undefined) says nothing
        self.parts = parts[:1] + [p for p in parts[1:] if np.isfinite(p.gains()).all() and np.isfinite(p.total())]

    def gains(self) -> np.ndarray:
        return np.mean([p.gains() for p in self.parts], axis=0)

    def observe(self, c: int) -> None:
        for p in self.parts:
            p.observe(c)

    def total(self) -> float:
        return float(np.mean([p.total() for p in self.parts]))
