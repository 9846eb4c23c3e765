"""Approach 3: recovery of known laws, the optimiser's robustness, closed forms and diagnostics."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from medscale.analysis import AnalysisError, ParametricFit, lse_huber, synthetic

TRUE = synthetic.LAW


def _logdata(df):
    return np.vstack([np.log(df.params), np.log(df.tokens)]), np.log(df.loss.to_numpy())


@pytest.fixture(scope="module")
def noiseless():
    df = synthetic.random_table(250, noise=0.0, seed=0)
    return ParametricFit(n_boot=0).fit(df.params, df.tokens, df.loss)


def test_recovers_noiseless_law(noiseless):
    for k, v in TRUE.items():
        assert noiseless.params_[k] == pytest.approx(v, rel=1e-5), k
    assert noiseless.warnings_ == []


def test_recovers_noisy_law_within_tolerance():
    df = synthetic.random_table(250, noise=0.005, seed=3)
    fit = ParametricFit(n_boot=0).fit(df.params, df.tokens, df.loss)
    assert fit.params_["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.params_["beta"] == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.params_["E"] == pytest.approx(TRUE["E"], abs=0.08)
    assert fit.estimates_["a"].value == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.03)


def test_gradient_matches_finite_differences():
    df = synthetic.random_table(60, noise=0.01, seed=1)
    logx, y = _logdata(df)
    w = np.random.default_rng(0).integers(0, 3, y.size).astype(float)
    theta = np.array([6.0, 6.2, 0.3, 0.3, 0.4])
    _, g = lse_huber.objective(theta, logx, y, w)
    eps = 1e-6
    num = [(lse_huber.objective(theta + eps * e, logx, y, w)[0] - lse_huber.objective(theta - eps * e, logx, y, w)[0])
           / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)


def test_batch_objective_matches_single():
    df = synthetic.random_table(40, noise=0.01, seed=2)
    logx, y = _logdata(df)
    grid = lse_huber.initialisation_grid(2)[::97]
    w = np.ones(y.size)
    single = [lse_huber.objective(t, logx, y, w)[0] for t in grid]
    np.testing.assert_allclose(lse_huber.objective_batch(grid, logx, y, w), single, rtol=1e-12)


def test_summed_huber_does_not_stall_where_mean_reduced_does():
    df = synthetic.random_table(250, noise=0.0, seed=0)
    logx, y = _logdata(df)
    w = np.ones(y.size)
    poor = np.array([5.0, 5.0, 0.5, 0.5, 0.0])
    # Same optimiser, scipy's default tolerances: only the reduction differs.
    summed = lse_huber.minimise(poor, logx, y, w, reduction="sum", options={})
    mean = lse_huber.minimise(poor, logx, y, w, reduction="mean", options={})
    assert summed.theta[2] == pytest.approx(TRUE["alpha"], abs=1e-3)
    assert abs(mean.theta[2] - TRUE["alpha"]) > 0.1 and mean.nit < 10
    # And the fit's own settings recover the law from starts far from it.
    for start in ([0.0, 0.0, 0.5, 0.5, 0.0], [10.0, 10.0, 1.0, 1.0, 1.0]):
        sol = lse_huber.minimise(np.array(start), logx, y, w)
        assert sol.theta[2:4] == pytest.approx([TRUE["alpha"], TRUE["beta"]], abs=1e-3)


def test_allocation_matches_closed_form_and_numerical_minimum(noiseless):
    p = noiseless.params_
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    a = p["beta"] / (p["alpha"] + p["beta"])
    for C in (1e19, 1e21, 1e24):
        assert noiseless.n_opt(C) == pytest.approx(G * (C / 6) ** a, rel=1e-9)
        assert noiseless.d_opt(C) == pytest.approx(C / (6 * noiseless.n_opt(C)), rel=1e-9)
        res = minimize_scalar(lambda ln: noiseless.predict(np.exp(ln), C / (6 * np.exp(ln))),
                              bounds=(10, 35), method="bounded", options={"xatol": 1e-10})
        assert np.exp(res.x) == pytest.approx(noiseless.n_opt(C), rel=1e-4)
        assert noiseless.n_opt(C) == pytest.approx(synthetic.n_opt(C), rel=1e-4)


def test_keeps_best_run_per_point_and_says_so():
    df = synthetic.isoflop_table(noise=0.0, lrs=(3e-4, 1e-3, 3e-3), lr_penalty=0.05)
    best = df[df.lr == 3e-4]
    many = ParametricFit(n_boot=0).fit(df.params, df.tokens, df.loss)
    one = ParametricFit(n_boot=0).fit(best.params, best.tokens, best.loss)
    assert any("lowest loss" in n for n in many.notes_)
    np.testing.assert_allclose(many.theta_, one.theta_, rtol=1e-6)
    assert many.n_points_ == len(best)


def test_too_few_points_is_a_clear_error():
    df = synthetic.random_table(5, seed=0)
    with pytest.raises(AnalysisError, match="at least 6 points"):
        ParametricFit(n_boot=0).fit(df.params, df.tokens, df.loss)


def test_warns_on_collinear_ladder_and_few_points():
    N = np.geomspace(1e7, 1e10, 12)
    D = 20 * N
    fit = ParametricFit(n_boot=0).fit(N, D, synthetic.loss(N, D))
    text = " ".join(fit.warnings_)
    assert "collinear" in text and "only 12 points" in text


def test_bootstrap_is_seeded_and_independent_of_jobs():
    df = synthetic.random_table(60, noise=0.01, seed=4)
    one = ParametricFit(n_boot=6, seed=1, n_jobs=1).fit(df.params, df.tokens, df.loss)
    two = ParametricFit(n_boot=6, seed=1, n_jobs=2).fit(df.params, df.tokens, df.loss)
    np.testing.assert_allclose(one.boot_thetas_, two.boot_thetas_, rtol=1e-10)
    other = ParametricFit(n_boot=6, seed=2).fit(df.params, df.tokens, df.loss)
    assert not np.allclose(one.boot_thetas_, other.boot_thetas_)


def test_leave_one_budget_out_reports_small_error_on_exact_data():
    df = synthetic.isoflop_table(noise=0.0)
    fit = ParametricFit(n_boot=0).fit(df.params, df.tokens, df.loss, budget=df.budget)
    lobo = fit.leave_one_budget_out()
    assert len(lobo) == df.budget.nunique()
    assert lobo["max_abs_rel_error"].max() < 1e-4


@pytest.fixture(scope="module")
def isoflop_noisy():
    return synthetic.isoflop_table(noise=0.01, seed=5)


def test_budget_labels_give_jackknife_intervals_that_are_its_t_intervals(isoflop_noisy):
    """With >= 5 labelled budgets the intervals come from refits without each budget: the percentile interval
    of a linear function of theta (alpha) is then that function's jackknife t interval (G - 1 df)."""
    from scipy.stats import t as student_t

    df = isoflop_noisy
    fit = ParametricFit(n_boot=4000, seed=0).fit(df.params, df.tokens, df.loss, budget=df.budget)
    G = df.budget.nunique()
    assert fit.interval_method_ == "jackknife" and fit.jackknife_thetas_.shape == (G, 5)
    assert any(f"jackknife over {G} budgets" in n for n in fit.notes_)
    alpha = fit.jackknife_thetas_[:, 2]
    se = np.sqrt((G - 1) / G * np.sum((alpha - alpha.mean()) ** 2))
    half = student_t.ppf(0.975, G - 1) * se
    est = fit.estimates_["alpha"]
    assert est.low == pytest.approx(fit.params_["alpha"] - half, abs=0.06 * half)
    assert est.high == pytest.approx(fit.params_["alpha"] + half, abs=0.06 * half)
    # N_opt at any compute: the jackknife t interval of log N_opt itself (log-linear in the law's rows)
    from medscale.analysis.parametric import _law_rows, _named

    C = 10 * df.compute.max()
    logn = _law_rows(_named(fit.jackknife_thetas_)) @ np.array([1.0, np.log(C), 0.0, 0.0])
    se_n = np.sqrt((G - 1) / G * np.sum((logn - logn.mean()) ** 2))
    lo, hi = np.percentile(np.log(fit.allocation_.n_opt_draws(C)[:, 0]), [2.5, 97.5])
    centre = np.log(fit.n_opt(C))
    assert (lo, hi) == pytest.approx((centre - student_t.ppf(0.975, G - 1) * se_n,
                                      centre + student_t.ppf(0.975, G - 1) * se_n), abs=0.06 * se_n * 2.5)
    # every draw feeds the allocation law and the prediction bands alike
    assert len(fit.allocation_.draws) == 4000 and fit.predict_draws([1e6], [1e8]).shape == (4000, 1)


def test_jackknife_is_seeded_and_the_bootstrap_stays_without_budgets(isoflop_noisy):
    df = isoflop_noisy
    one = ParametricFit(n_boot=50, seed=3).fit(df.params, df.tokens, df.loss, budget=df.budget)
    assert len(one.boot_thetas_) == 2000  # t draws are free: never fewer than jackknife.MIN_DRAWS
    two = ParametricFit(n_boot=50, seed=3).fit(df.params, df.tokens, df.loss, budget=df.budget)
    np.testing.assert_array_equal(one.boot_thetas_, two.boot_thetas_)
    plain = ParametricFit(n_boot=20, seed=3).fit(df.params, df.tokens, df.loss)
    assert plain.interval_method_ == "bootstrap" and any("bootstrap of runs" in n for n in plain.notes_)
    forced = ParametricFit(n_boot=20, seed=3, interval="bootstrap").fit(df.params, df.tokens, df.loss,
                                                                         budget=df.budget)
    assert forced.interval_method_ == "bootstrap"
    with pytest.raises(AnalysisError, match="at least 5 budgets"):
        ParametricFit(n_boot=20, interval="jackknife").fit(df.params, df.tokens, df.loss)
    with pytest.raises(AnalysisError, match="interval must be one of"):
        ParametricFit(interval="sandwich")
