"""The adaptive selector's delta-method scoring (analysis/delta_cov.py, design.SCORING = "delta"): its gradients are
the law's, its covariance agrees with the bootstrap's where the law holds, its choices do not depend on the
bootstrap's size, and its noise prior does what noise_var says."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from medscale.analysis import delta_cov
from medscale.analysis import design as ds
from medscale.analysis import synthetic
from medscale.analysis.errors import AnalysisError
from medscale.analysis.parametric import _named


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _pool_and_fit(n_boot=60, noise=0.01, seed=0):
    t = synthetic.isoflop_table((1e18, 3e18, 1e19, 3e19, 1e20), sizes=6, noise=noise, seed=seed)
    pool = ds.pool_frame(t["params"], t["tokens"])
    revealed = {i: float(t["loss"].iat[i]) for i in range(len(t)) if i % 3 != 0}
    return t, pool, revealed, ds.fit_revealed(pool, revealed, n_boot=n_boot, seed=0)


def test_gradients_match_the_law_by_finite_differences():
    _, pool, _, fit = _pool_and_fit(n_boot=20)
    theta = np.asarray(fit.theta_, dtype=float)
    N, D = pool["params"].to_numpy()[:7], pool["tokens"].to_numpy()[:7]

    def log_loss(t):
        return np.logaddexp.reduce([t[0] - t[2] * np.log(N), t[1] - t[3] * np.log(D), np.full(N.size, t[4])])

    assert np.allclose(log_loss(theta), np.log(fit.predict(N, D)))  # the theta layout delta_cov assumes
    h, G = 1e-6, delta_cov.log_loss_gradient(theta, N, D)
    for i in range(5):
        e = np.eye(5)[i] * h
        assert np.allclose(G[:, i], (log_loss(theta + e) - log_loss(theta - e)) / (2 * h), atol=1e-6)
    C = 1e22  # log N_opt's gradient is of the fit's own N_opt: a step along it moves fit.n_opt as predicted
    g = delta_cov.log_n_opt_gradient(theta, C)[0]
    step = 1e-3 * g / np.linalg.norm(g)
    lo, hi = _named(theta - step), _named(theta + step)
    change = np.log(hi["G"][0] / lo["G"][0]) + (hi["a"][0] - lo["a"][0]) * np.log(C / 6)
    assert change == pytest.approx(2 * g @ step, rel=1e-4)
    p = _named(theta)
    assert np.log(fit.n_opt(C)) == pytest.approx(np.log(p["G"][0]) + p["a"][0] * np.log(C / 6))


def test_delta_covariance_agrees_with_the_bootstraps_where_the_law_holds():
    _, pool, revealed, fit = _pool_and_fit(n_boot=200, noise=0.01)
    cand = np.array([i for i in range(len(pool)) if i not in revealed])
    target = ds.Target.n_opt(3e21)
    boot, n = ds._joint_cov(fit, pool, cand, target, scoring="bootstrap")
    delta, _ = ds._joint_cov(fit, pool, cand, target, scoring="delta", s2=ds.noise_var(fit, prior=0.0))
    ratio = np.diag(delta) / np.diag(boot)
    assert 1 / 3 < np.median(ratio) < 3  # same scale
    assert spearmanr(np.diag(delta)[:n], np.diag(boot)[:n]).correlation > 0.7  # same ranking of candidates
    assert np.all(np.linalg.eigvalsh(delta) > -1e-12)


def test_delta_choices_do_not_depend_on_the_bootstraps_size_and_a_bad_scoring_is_refused():
    t, pool, revealed, fit_small = _pool_and_fit(n_boot=20)
    fit_large = ds.fit_revealed(pool, revealed, n_boot=120, seed=0)
    target, budget = ds.Target.n_opt(3e21), 0.3 * pool["cost"].sum()
    a = ds.select(pool, revealed, target, budget, batch=5, fit=fit_small, scoring="delta")
    b = ds.select(pool, revealed, target, budget, batch=5, fit=fit_large, scoring="delta")
    assert a.rows.tolist() == b.rows.tolist() and np.allclose(a.scores, b.scores)
    with pytest.raises(AnalysisError, match="scoring must be one of"):
        ds.select(pool, revealed, target, budget, fit=fit_small, scoring="laplace")


def test_noise_prior_is_the_posterior_mean_and_fades_with_runs():
    _, pool, revealed, fit = _pool_and_fit(n_boot=20, noise=0.002)
    res = fit.residuals()
    r, logL = res["residual"].to_numpy(), np.log(res["loss"].to_numpy())
    assert ds.noise_var(fit, prior=0.0) == pytest.approx(max(np.mean(r**2), ds.NOISE_FLOOR**2))
    expected = (2 * np.var(logL) + np.sum(r**2) / 2) / (2 + r.size / 2 - 1)
    assert ds.noise_var(fit, prior=2.0) == pytest.approx(expected)
    assert ds.noise_var(fit, prior=2.0) > ds.noise_var(fit, prior=0.0)  # a near-interpolating fit understates noise
    few = dict(list(revealed.items())[:8])  # fewer runs: the prior weighs more
    fit_few = ds.fit_revealed(pool, few, n_boot=20, seed=0)
    lf = np.log(fit_few.residuals()["loss"].to_numpy())
    assert ds.noise_var(fit_few, prior=2.0) / np.var(lf) > ds.noise_var(fit, prior=2.0) / np.var(logL)
