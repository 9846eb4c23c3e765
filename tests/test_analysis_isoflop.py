"""Approach 2 (IsoFLOP parabolas) and Approach 1 (envelope) against known laws."""
import numpy as np
import pytest

from medscale.analysis import AnalysisError, EnvelopeFit, IsoFlopFit, synthetic

A_TRUE = synthetic.LAW["beta"] / (synthetic.LAW["alpha"] + synthetic.LAW["beta"])


def test_isoflop_recovers_exponents_noiseless():
    df = synthetic.isoflop_table(noise=0.0)
    fit = IsoFlopFit(n_boot=50).fit(df.params, df.compute, df.loss, budget=df.budget)
    assert fit.estimates_["a"].value == pytest.approx(A_TRUE, abs=0.01)
    assert fit.estimates_["b"].value == pytest.approx(1 - A_TRUE, abs=0.01)
    np.testing.assert_allclose(fit.minima_.n_opt, synthetic.n_opt(fit.minima_.budget), rtol=0.05)
    assert fit.warnings_ == []


def test_isoflop_recovers_exponents_with_noise_and_interval_covers():
    df = synthetic.isoflop_table(noise=0.003, sizes=11, seed=1)
    fit = IsoFlopFit(n_boot=200).fit(df.params, df.compute, df.loss)
    a = fit.estimates_["a"]
    assert a.value == pytest.approx(A_TRUE, abs=0.04)
    assert a.low < a.value < a.high


def test_grouping_by_compute_matches_budget_column():
    df = synthetic.isoflop_table(noise=0.002, seed=2)
    df["compute"] *= np.random.default_rng(0).uniform(0.98, 1.02, len(df))  # rounding of steps
    by_col = IsoFlopFit(n_boot=0).fit(df.params, df.compute, df.loss, budget=df.budget)
    by_c = IsoFlopFit(n_boot=0).fit(df.params, df.compute, df.loss)
    assert len(by_c.minima_) == df.budget.nunique()
    assert by_c.estimates_["a"].value == pytest.approx(by_col.estimates_["a"].value, abs=0.02)


def test_edge_minimum_warns():
    df = synthetic.isoflop_table(noise=0.0, offset=8.0)  # every size is above the true optimum
    fit = IsoFlopFit(n_boot=0).fit(df.params, df.compute, df.loss, budget=df.budget)
    assert fit.minima_.edge.all()
    assert any("edge of the sizes" in w for w in fit.warnings_)


def test_too_few_sizes_or_budgets():
    df = synthetic.isoflop_table(budgets=(1e19, 1e20), sizes=2)
    with pytest.raises(AnalysisError, match="at least 2 compute budgets with at least 3"):
        IsoFlopFit(n_boot=0).fit(df.params, df.compute, df.loss, budget=df.budget)
    df = synthetic.isoflop_table(budgets=(1e19, 1e20, 1e21), sizes=5)
    df = df[~((df.budget == 1e21) & (df.index % 5 > 1))]
    fit = IsoFlopFit(n_boot=0).fit(df.params, df.compute, df.loss, budget=df.budget)
    assert any("budget 1e+21: only 2 size(s)" in w for w in fit.warnings_)


def test_envelope_of_curves_recovers_exponent():
    res, cur = synthetic.curves_table(noise=0.0, sizes=np.geomspace(2e7, 2e10, 24))
    cur = cur.merge(res[["run_id", "params"]], on="run_id")
    fit = EnvelopeFit(n_boot=40).fit(cur.run_id, cur.params, cur.compute, cur.loss)
    assert fit.estimates_["a"].value == pytest.approx(A_TRUE, abs=0.04)
    assert not fit.final_only_
    # Only bracketed winners are used: each used size has a smaller and a larger size beside it.
    assert fit.points_.params.min() > res.params.min() and fit.points_.params.max() < res.params.max()


def test_envelope_from_final_points_notes_it():
    df = synthetic.isoflop_table(noise=0.0)
    fit = EnvelopeFit(n_boot=20).fit(df.run_id, df.params, df.compute, df.loss)
    assert fit.final_only_ and any("final point" in n for n in fit.notes_)
    assert 0.3 < fit.estimates_["a"].value < 0.6
    with pytest.raises(AnalysisError, match="at least 3 runs"):
        EnvelopeFit().fit(["a", "b"], [1e8, 2e8], [1e19, 2e19], [3.0, 2.9])
