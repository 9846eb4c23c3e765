"""Single-variable laws L(x) = E + A x^-alpha."""
import numpy as np
import pytest

from medscale.analysis import AnalysisError, OffsetPowerLaw


def test_recovers_single_variable_law_and_predicts():
    x = np.geomspace(1e6, 1e10, 20)
    L = 1.9 + 300 * x**-0.31
    fit = OffsetPowerLaw("N", n_boot=20).fit(x, L)
    assert fit.params_["E"] == pytest.approx(1.9, rel=1e-4)
    assert fit.params_["A"] == pytest.approx(300, rel=1e-3)
    assert fit.params_["alpha"] == pytest.approx(0.31, rel=1e-4)
    np.testing.assert_allclose(fit.predict(x), L, rtol=1e-6)


def test_noisy_law_is_close_with_a_narrow_interval():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e10, 40)
    L = (1.9 + 300 * x**-0.31) * np.exp(rng.normal(0, 0.003, x.size))
    fit = OffsetPowerLaw("N", n_boot=100, seed=1).fit(x, L)
    e = fit.estimates_["alpha"]
    assert e.value == pytest.approx(0.31, abs=0.01)
    assert e.low < e.value < e.high and e.high - e.low < 0.05


def test_needs_four_distinct_values():
    with pytest.raises(AnalysisError, match="at least 4"):
        OffsetPowerLaw("C").fit([1e18, 1e19, 1e20, 1e20], [3.0, 2.8, 2.7, 2.6])
