"""The bias-aware design criterion (analysis/design_bias.py, `select(scoring="bias")`): its mean squared error is
what simulated discrepancies and noise give, a candidate's gain is the error removed by adding it, ratio 0 ranks
candidates as the delta criterion does, and a discrepancy moves the picks toward the target."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from medscale.analysis import delta_cov
from medscale.analysis import design as ds
from medscale.analysis import synthetic
from medscale.analysis.design_bias import BiasVariance, _coords, _kernel

N_BOOT = 20


@pytest.fixture(scope="module")
def study():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = synthetic.isoflop_table((1e18, 3e18, 1e19, 3e19, 1e20), sizes=5, noise=0.01, seed=0)
        pool = ds.pool_frame(t["params"], t["tokens"])
        C = 3e21
        N = synthetic.n_opt(C) * np.array([0.5, 2.0])
        target = ds.Target.planned(N, C / (6 * N))
        revealed = {int(r): float(t["loss"].iat[r]) for r in ds.initial_design(pool)}
        fit = ds.fit_revealed(pool, revealed, n_boot=N_BOOT, seed=0)
    cand = np.array([i for i in range(len(pool)) if i not in revealed])
    return t, pool, target, revealed, fit, cand


def _simulated_mse(fit, params, tokens, target, s2, ratio, ell, draws=40_000, seed=0):
    """Mean of |e|^2 over drawn discrepancies, noise and prior draws of theta,
    e = G M (J_R' (delta_R + eps_R) / s2 + L (mu - theta)) - delta_T."""
    theta = np.asarray(fit.theta_, dtype=float)
    J = delta_cov.log_loss_gradient(theta, params, tokens)
    G = target.gradient(fit)
    L = np.diag(1 / delta_cov.PRIOR_SD**2)
    M = np.linalg.inv(J.T @ J / s2 + L)
    X = np.vstack([_coords(params, tokens), _coords(target.params, target.tokens)])
    K = _kernel(X, X, ratio * s2, ell) + 1e-12 * np.eye(len(X))
    rng = np.random.default_rng(seed)
    delta = rng.multivariate_normal(np.zeros(len(X)), K, size=draws)
    eps = rng.normal(0, np.sqrt(s2), size=(draws, len(params)))
    n = len(params)
    prior = rng.normal(size=(draws, 5)) * delta_cov.PRIOR_SD  # mu - theta under the prior
    e = ((delta[:, :n] + eps) @ J / s2 + prior @ L) @ M.T @ G.T - delta[:, n:]
    return float(np.mean((e**2).sum(axis=1)))


def test_the_mean_squared_error_is_what_simulated_discrepancies_give(study):
    _, pool, target, revealed, fit, cand = study
    s2 = 1e-4
    for ratio, ell in ((0.0, 1.0), (2.0, 0.5), (4.0, 1.0)):
        crit = BiasVariance(fit, pool["params"].iloc[cand], pool["tokens"].iloc[cand], target, s2, ratio, ell)
        rows = sorted(revealed)
        sim = _simulated_mse(fit, pool["params"].iloc[rows].to_numpy(), pool["tokens"].iloc[rows].to_numpy(), target,
                             s2, ratio, ell)
        assert crit.total() == pytest.approx(sim, rel=0.03), (ratio, ell)
        # a candidate's gain is the error removed by adding it to the seen runs
        c = int(np.argmax(crit.gains()))
        gain = crit.gains()[c]
        more = rows + [int(cand[c])]
        after = _simulated_mse(fit, pool["params"].iloc[more].to_numpy(), pool["tokens"].iloc[more].to_numpy(),
                               target, s2, ratio, ell)
        assert crit.total() - gain == pytest.approx(after, rel=0.03)
        crit.observe(c)
        assert crit.total() == pytest.approx(after, rel=0.03)


def test_ratio_zero_is_the_delta_criterion(study):
    _, pool, target, revealed, fit, _ = study
    delta = ds.first_pick_scores(fit, pool, revealed, target, scoring="delta")
    bias0 = ds.first_pick_scores(fit, pool, revealed, target, scoring="bias", bias_ratio=0.0)
    np.testing.assert_allclose(bias0, delta, rtol=1e-6, atol=1e-12 * np.abs(delta).max())
    bias4 = ds.first_pick_scores(fit, pool, revealed, target, scoring="bias", bias_ratio=4.0)
    assert not np.allclose(bias4, delta)


def test_a_discrepancy_moves_the_batch_toward_the_target_and_the_batch_is_valid(study):
    _, pool, target, revealed, fit, _ = study
    cost = pool["cost"].to_numpy()
    left = cost.sum()
    logc = {}
    for ratio in (0.0, 4.0):
        b = ds.select(pool, revealed, target, left, batch=5, fit=fit, scoring="bias", bias_ratio=ratio)
        assert b.rows.size == 5 and len(set(b.rows)) == 5 and not set(b.rows) & set(revealed)
        assert cost[b.rows].sum() <= left and b.variance_after < b.variance
        logc[ratio] = np.log10(cost[b.rows]).mean()
    assert logc[4.0] > logc[0.0]
    with pytest.raises(ds.AnalysisError, match="scoring"):
        ds.select(pool, revealed, target, left, fit=fit, scoring="bias-ish")
