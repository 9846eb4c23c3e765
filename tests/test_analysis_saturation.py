"""Downstream saturation: curve recovery, saturation size, ranking."""
import numpy as np
import pytest

from medscale.analysis import SaturationFit, fit_saturation, synthetic


def _closed_form(k, gamma, threshold):
    return (k * (1 - 2**-gamma) / threshold) ** (1 / gamma)


def test_recovers_curve_and_saturation_size_noiseless():
    N = np.geomspace(1e6, 3e9, 8)
    m_inf, k, g = synthetic.SATURATION_TASKS["fast"]
    f = SaturationFit(threshold=0.005, n_boot=0).fit(N, synthetic.saturating(N, m_inf, k, g))
    assert f.params_["gamma"] == pytest.approx(g, rel=1e-3)
    assert f.params_["m_inf"] == pytest.approx(m_inf, abs=1e-4)
    assert f.saturation_.value == pytest.approx(_closed_form(k, g, 0.005), rel=0.01)
    s = f.saturation_.value
    assert f.gain_per_doubling(s) == pytest.approx(0.005, rel=1e-3)


def test_ranks_fast_saturating_task_before_slow_one():
    res = fit_saturation(synthetic.downstream_table(seed=1), n_boot=100)
    rank = res.ranking()
    assert list(rank.task) == ["fast", "slow"]
    fast = rank.iloc[0]
    truth = _closed_form(*synthetic.SATURATION_TASKS["fast"][1:], 0.005)
    assert fast.low < truth < fast.high
    assert set(res.baselines["mode"]) == {"lightgbm", "ceiling"}


def test_lower_is_better_metric_and_flat_curve():
    N = np.geomspace(1e6, 1e9, 6)
    brier = 0.1 + 2.0 * N**-0.3
    f = SaturationFit(higher_is_better=False, n_boot=0).fit(N, brier)
    assert f.params_["m_inf"] == pytest.approx(0.1, abs=1e-3)
    flat = SaturationFit(n_boot=0).fit(N, np.full(N.size, 0.8) + np.r_[1, -1, 1, -1, 1, -1] * 1e-4)
    assert flat.below_range_ and any("already saturated" in w for w in flat.warnings_)
