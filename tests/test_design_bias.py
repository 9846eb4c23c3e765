"""The bias-aware design criterion (analysis/design_bias.py, `select(scoring="bias")`): its mean squared error is
what simulated discrepancies and noise give, a candidate's gain is the error removed by adding it, ratio 0 ranks
candidates as the delta criterion does, and a discrepancy moves the picks toward the target. The data-constrained
law is linearised too: where nothing repeats it is the Chinchilla law's gradient, its error is what simulation
gives, and its picks no longer come from (or depend on) bootstrap draws."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from medscale.analysis import delta_cov
from medscale.analysis import design as ds
from medscale.analysis import synthetic
from medscale.analysis.data_constrained import params_for_data
from medscale.analysis.design_bias import BiasVariance, _coords, _kernel, jacobian, prior_sd

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


def _simulated_mse(fit, params, tokens, target, s2, ratio, ell, draws=40_000, seed=0, unique=None):
    """Mean of |e|^2 over drawn discrepancies, noise and prior draws of theta,
    e = G M (J_R' (delta_R + eps_R) / s2 + L (mu - theta)) - delta_T."""
    J = jacobian(fit, params, tokens, unique)
    G = target.gradient(fit)
    sd = prior_sd(fit)
    L = np.diag(1 / sd**2)
    M = np.linalg.inv(J.T @ J / s2 + L)
    X = np.vstack([_coords(params, tokens, unique), _coords(target.params, target.tokens, target.unique)])
    K = _kernel(X, X, ratio * s2, ell) + 1e-12 * np.eye(len(X))
    rng = np.random.default_rng(seed)
    delta = rng.multivariate_normal(np.zeros(len(X)), K, size=draws)
    eps = rng.normal(0, np.sqrt(s2), size=(draws, len(params)))
    n = len(params)
    prior = rng.normal(size=(draws, sd.size)) * sd  # mu - theta under the prior
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


@pytest.fixture(scope="module")
def repeated():
    """A data-constrained IsoFLOP grid (runs repeating their data up to 60 epochs) and a fit on its initial design."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = synthetic.data_constrained_table((1e18, 1e19), sizes=4, epochs=(1.0, 4.0, 25.0), noise=0.01, seed=1)
        pool = ds.pool_frame(t["params"], t["tokens"], t["unique_tokens"])
        revealed = {int(r): float(t["loss"].iat[r]) for r in ds.initial_design(pool, min_runs=9)}
        fit = ds.fit_revealed(pool, revealed, n_boot=2, seed=0)  # the criterion reads the point only
    target = ds.Target.planned([3e9], [6e10], [2e10])  # 3 epochs, past the grid's compute
    return t, pool, target, revealed, fit


def test_where_nothing_repeats_the_data_constrained_gradient_is_the_chinchilla_one(repeated):
    _, _, _, _, fit = repeated
    assert isinstance(fit, ds.DataConstrainedFit) and len(fit.theta_) == 7
    N = np.geomspace(1e7, 1e8, 5)
    D = 500 * N  # over-trained: N well below N_u(D), no parameter excess either
    assert np.all(N < 0.5 * params_for_data(fit.params_, D))
    J = jacobian(fit, N, D, unique=D * 10)
    exact = delta_cov.log_loss_gradient(np.asarray(fit.theta_[:5]), N, D)
    np.testing.assert_allclose(J[:, :5], exact, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(J[:, 5:], 0.0, atol=1e-8)
    repeats = jacobian(fit, N, D, unique=D / 20)  # 20 epochs: R*_D moves the loss
    assert np.abs(repeats[:, 5]).min() > 1e-4


def test_the_data_constrained_error_is_what_simulated_discrepancies_give(repeated):
    _, pool, target, revealed, fit = repeated
    cand = np.array([i for i in range(len(pool)) if i not in revealed])
    sub, rows = pool.iloc[cand], sorted(revealed)
    seen = pool.iloc[rows]
    s2 = 1e-4
    crit = BiasVariance(fit, sub["params"], sub["tokens"], target, s2, 1.0, 1.0, sub["unique_tokens"])
    sim = _simulated_mse(fit, seen["params"].to_numpy(), seen["tokens"].to_numpy(), target, s2, 1.0, 1.0,
                         unique=seen["unique_tokens"].to_numpy())
    assert crit.total() == pytest.approx(sim, rel=0.03)
    c = int(np.argmax(crit.gains()))
    more = pool.iloc[rows + [int(cand[c])]]
    after = _simulated_mse(fit, more["params"].to_numpy(), more["tokens"].to_numpy(), target, s2, 1.0, 1.0,
                           unique=more["unique_tokens"].to_numpy())
    assert crit.total() - crit.gains()[c] == pytest.approx(after, rel=0.03)


def test_on_repeated_data_the_bias_picks_come_from_the_law_not_from_bootstrap_draws(repeated):
    import copy

    _, pool, target, revealed, fit = repeated
    left = pool["cost"].sum() / 4
    picks = {}
    for seed in (0, 1):  # two sets of 30 draws around the same point
        f = copy.copy(fit)
        f.boot_thetas_ = fit.theta_ + np.random.default_rng(seed).normal(0, 0.05, (30, len(fit.theta_)))
        b = ds.select(pool, revealed, target, left, batch=4, fit=f, scoring="bias")
        assert b.rows.size == 4 and not set(b.rows) & set(revealed) and b.variance_after < b.variance
        picks[seed] = (b.rows, ds.select(pool, revealed, target, left, batch=4, fit=f, scoring="delta").rows)
    np.testing.assert_array_equal(picks[0][0], picks[1][0])  # the draws play no part in the bias picks
    assert not np.array_equal(picks[0][1], picks[1][1])  # where they do (delta's draws on this law), they move them


def test_averaged_over_draws_the_gain_is_the_mean_of_each_linearisation_and_a_degenerate_draw_is_dropped(study):
    import copy

    from medscale.analysis.design_bias import AveragedBias

    _, pool, _, revealed, fit, cand = study
    target = ds.Target.n_opt(3e21)
    sub = pool.iloc[cand]
    args = (fit, sub["params"], sub["tokens"], target, 1e-4, 1.0, 1.0)
    thetas = fit.boot_thetas_[np.all(np.isfinite(fit.boot_thetas_), axis=1)][:3]
    avg = AveragedBias(*args, draws=3)
    each = [BiasVariance(*args, theta=t) for t in (None, *thetas)]
    np.testing.assert_allclose(avg.gains(), np.mean([c.gains() for c in each], axis=0), rtol=1e-10)
    assert not np.allclose(each[0].gains(), each[1].gains())  # the draws do move the gains
    # a draw with an exponent at 0 has no N_opt gradient: it is dropped, and the batch is still chosen
    broken = copy.copy(fit)
    broken.boot_thetas_ = np.vstack([fit.boot_thetas_[:2], [[5.0, 5.0, 0.0, 0.0, 0.5]]])
    assert len(AveragedBias(broken, *args[1:], draws=3).parts) == 3
    left = pool["cost"].sum()
    b = ds.select(pool, revealed, target, left, batch=4, fit=broken, scoring="bias", bias_draws=3)
    assert b.rows.size == 4 and np.isfinite(b.scores).all()
