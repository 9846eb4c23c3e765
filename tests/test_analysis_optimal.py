"""Compute-optimal allocation with and without a token cap."""
import numpy as np
import pytest

from medscale.analysis import AnalysisError, ParametricFit, compute_optimal, synthetic


@pytest.fixture(scope="module")
def fit():
    df = synthetic.random_table(120, noise=0.005, seed=7)
    return ParametricFit(n_boot=40, seed=0).fit(df.params, df.tokens, df.loss)


def test_unconstrained_allocation_spends_the_budget_with_intervals(fit):
    C = 1e21
    al = compute_optimal(fit, C)
    assert not al.token_limited
    assert 6 * al.n_opt.value * al.d_opt.value == pytest.approx(C)
    assert al.n_opt.value == pytest.approx(fit.n_opt(C))
    for e in (al.n_opt, al.d_opt, al.tokens_per_param, al.loss):
        assert e.low <= e.value <= e.high
    assert al.tokens_per_param.value == pytest.approx(al.d_opt.value / al.n_opt.value)


def test_token_cap_moves_budget_to_a_larger_model(fit):
    C = 1e22
    free = compute_optimal(fit, C)
    cap = free.d_opt.value / 4
    capped = compute_optimal(fit, C, max_tokens=cap)
    assert capped.token_limited
    assert capped.d_opt.value == pytest.approx(cap)
    assert capped.n_opt.value == pytest.approx(C / (6 * cap))
    assert capped.loss.value > free.loss.value
    assert any("token-limited" in n for n in capped.notes)
    # Numerically: no feasible N on the 6ND = C line with D <= cap has a lower predicted loss.
    N = np.geomspace(C / (6 * cap), C / (6 * cap) * 100, 400)
    assert fit.predict(N, C / (6 * N)).min() >= capped.loss.value - 1e-12
    # Allowing 4 epochs over the same data lifts the cap above the optimum.
    epochs = compute_optimal(fit, C, max_tokens=cap, max_epochs=4)
    assert not epochs.token_limited


def test_cap_not_binding_changes_nothing(fit):
    free = compute_optimal(fit, 1e20)
    capped = compute_optimal(fit, 1e20, max_tokens=free.d_opt.value * 10)
    assert not capped.token_limited
    for x, y in ((capped.n_opt, free.n_opt), (capped.d_opt, free.d_opt)):
        assert (x.value, x.low, x.high) == pytest.approx((y.value, y.low, y.high), rel=1e-12)


def test_bad_budget():
    with pytest.raises(AnalysisError):
        compute_optimal(object(), 1e20)
