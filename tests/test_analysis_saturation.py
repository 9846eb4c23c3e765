"""Downstream saturation: curve recovery, saturation size, ranking."""
import numpy as np
import pandas as pd
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


# ---- known truth: bounded curves, verdicts, paired intervals ---------------------------------------------

def _paired_draws(truth, rng, n_boot=200, shared=0.02, own=0.004):
    """Draws of a metric at each size on resampled test sets: a test-set difficulty shared by every size plus
    a little noise of each model's own (what scoring every size on the same subjects produces)."""
    common = rng.normal(0, shared, (n_boot + 1, 1))
    draws = truth[None] + common + rng.normal(0, own, (n_boot + 1, truth.size))
    return draws[0], draws[1:]


def test_known_saturation_size_is_recovered_within_its_paired_interval():
    from medscale.analysis.saturation import m_inf_bounds

    N = np.geomspace(1e5, 1e8, 7)
    m_inf, gamma, threshold = 0.86, 0.45, 0.005
    true_sat = 2e6
    k = threshold * true_sat**gamma / (1 - 2**-gamma)   # x_sat(k, gamma) = true_sat
    truth = synthetic.saturating(N, m_inf, k, gamma)
    covered = 0
    for seed in range(5):
        y, draws = _paired_draws(truth, np.random.default_rng(seed))
        f = SaturationFit(threshold=threshold, n_boot=200, bounds=m_inf_bounds("auroc", 0.9)).fit(N, y, draws=draws)
        assert f.noise_.startswith("paired")
        covered += f.saturation_.low <= true_sat <= f.saturation_.high
        assert f.status_ == "saturates"
    assert covered >= 4


def test_a_flat_task_is_called_flat_and_a_rising_task_still_gaining():
    from medscale.analysis.saturation import m_inf_bounds

    N = np.geomspace(2e4, 3e5, 5)
    rng = np.random.default_rng(0)
    flat_y, flat_draws = _paired_draws(np.full(N.size, 0.71), rng)
    flat = SaturationFit(n_boot=200, bounds=m_inf_bounds("auroc", 0.9)).fit(N, flat_y, draws=flat_draws)
    assert flat.status_ == "flat" and flat.p_flat_ > 0.5
    rising = 0.60 + 0.03 * np.log2(N / N[0])      # +0.03 AUROC per doubling, no bend in sight
    ry, rdraws = _paired_draws(rising, rng)
    r = SaturationFit(n_boot=200, bounds=m_inf_bounds("auroc", 0.95)).fit(N, ry, draws=rdraws)
    assert r.status_ == "still gaining" and r.p_gaining_ > 0.8
    assert r.estimates_["m_inf"].high <= 0.95 and np.isfinite(r.saturation_.high)
    assert r.gain_at_largest_.value > 0.01


def test_m_inf_never_leaves_the_metric_range_or_passes_the_ceiling():
    from medscale.analysis.saturation import m_inf_bounds

    rng = np.random.default_rng(3)
    N = np.geomspace(1e4, 1e7, 6)
    for i in range(40):
        shape = i % 4
        base = [0.55 + 0.08 * np.log10(N / N[0]),          # straight line in log N (m_inf would be 13.7)
                0.97 - 0.5 * (N / N[0]) ** -0.05,           # slow bend towards a true ceiling near 0.97
                0.8 - 0.02 * np.log10(N / N[0]),            # gets worse with size
                np.full(N.size, 0.65)][shape]
        y, draws = _paired_draws(np.clip(base, 0.5, 1.0), rng, n_boot=50, shared=0.03, own=0.02)
        ceiling = 0.97
        lo, hi = m_inf_bounds("auroc", ceiling)
        f = SaturationFit(n_boot=50, bounds=(lo, hi)).fit(N, y, draws=draws)
        m = f.boot_coef_[:, 0]
        assert lo - 1e-12 <= f.params_["m_inf"] <= hi + 1e-12
        assert np.all((m >= lo - 1e-12) & (m <= hi + 1e-12))
        assert np.isfinite(f.saturation_.low) or f.saturation_.low == 0 or np.isinf(f.saturation_.low)
        assert not np.isnan(f.saturation_.high)           # inf is allowed (never saturates), NaN is not
    brier_lo, _ = m_inf_bounds("brier", 0.12)
    b = SaturationFit(higher_is_better=False, n_boot=0, bounds=m_inf_bounds("brier", 0.12)).fit(
        N, 0.2 - 0.01 * np.log10(N / N[0]))
    assert b.params_["m_inf"] >= brier_lo == 0.12


def test_infinite_draws_give_an_infinite_bound_not_nan():
    from medscale.analysis.bootstrap import estimate, exceedance

    draws = np.r_[np.geomspace(1e6, 1e8, 70), np.full(30, np.inf)]
    e = estimate(1e7, draws)
    assert e.high == np.inf and np.isfinite(e.low)
    assert exceedance(draws, 1e9) == pytest.approx(0.3)


def test_paired_intervals_of_differences_are_narrower_than_unpaired_ones():
    from medscale.analysis.paired import paired_differences

    rng = np.random.default_rng(1)
    truth = np.array([0.70, 0.72, 0.735, 0.74])
    y, draws = _paired_draws(truth, rng, n_boot=400, shared=0.02, own=0.003)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    d = paired_differences([1, 2, 3, 4], y, draws, low=lo, high=hi)
    paired_width = d["high"] - d["low"]
    unpaired_width = d["unpaired_high"] - d["unpaired_low"]
    assert (paired_width < 0.5 * unpaired_width).all()
    assert d.loc[0, "low"] > 0 and d.loc[0, "p_better"] > 0.95     # size 2 beats size 1: only the pairing shows it
    assert d.loc[0, "unpaired_low"] < 0


def test_one_run_per_size_keeps_the_longest_trained_and_draws_pair_the_sizes():
    from medscale.analysis.saturation import one_run_per_size

    rows = pd.DataFrame({"run_id": ["a", "b", "c", "d", "e"], "params": [1e4, 1e4, 2e4, 4e4, 8e4],
                         "compute": [1e12, 3e12, 3e12, 3e12, 3e12], "value": [0.6, 0.7, 0.72, 0.73, 0.74]})
    kept = one_run_per_size(rows, "params")
    assert list(kept["run_id"]) == ["b", "c", "d", "e"]
    table = rows.assign(task="t", mode="probe", metric="auroc", low=rows.value - 0.02, high=rows.value + 0.02)
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.02, 100)
    draws = pd.DataFrame([{"run_id": r, "task": "t", "mode": "probe", "metric": "auroc", "seed": s, "draw": b,
                           "value": v + shared[b] + rng.normal(0, 0.002) + 0.01 * s, "resample": "R"}
                          for r, v in zip(rows.run_id, rows.value) for s in (0, 1) for b in range(100)])
    res = fit_saturation(table, n_boot=100, primary=("probe",), draws=draws)
    assert res.fits[("t", "probe")].noise_.startswith("paired")
    diffs = res.differences("t", "probe")
    assert len(diffs) == 3 and (diffs["high"] - diffs["low"] < diffs["unpaired_high"] - diffs["unpaired_low"]).all()


def test_report_names_m_inf_at_its_ceiling_in_words():
    """A task still gaining linearly in log N until the largest size: m_inf is set by the ceiling, not the data,
    and the downstream report says so beside the value (not only the bound's number)."""
    from medscale.analysis.report_downstream import _m_inf_flag
    from medscale.analysis.saturation import m_inf_bounds

    N = np.geomspace(1e5, 1e8, 8)
    y = 0.6 + 0.04 * np.log10(N / 1e5)  # straight in log N up to 0.72; ceiling 0.75
    bounds = m_inf_bounds("auroc", 0.75)
    f = SaturationFit(n_boot=50, bounds=bounds).fit(N, y)
    text = _m_inf_flag(f, bounds[1])
    assert "upper bound" in text and "not a measurement" in text
    calm = SaturationFit(n_boot=50, bounds=m_inf_bounds("auroc", 0.99)).fit(N, 0.7 - 0.1 * (N / 1e5) ** -0.8)
    assert _m_inf_flag(calm, 0.99) == " <small>(bound 0.99)</small>"
