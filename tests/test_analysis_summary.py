"""fit_table: the table-to-JSON entry point behind `medscale fit`, and its input errors."""
import json

import numpy as np
import pytest

from medscale.analysis import AnalysisError, fit_table, synthetic

KEYS3 = ("E", "A", "B", "alpha", "beta", "a", "b")


@pytest.fixture(scope="module")
def iso():
    return synthetic.isoflop_table(noise=0.005, seed=3)


def test_approach3_json_has_every_parameter_with_interval(iso):
    res = fit_table(iso, params="params", loss="loss", tokens="tokens", n_boot=20)
    out = json.loads(res.to_json())
    assert out["approach"] == 3 and out["n_points"] == len(iso)
    for k in KEYS3:
        v = out[k]
        assert set(v) == {"value", "interval"} and len(v["interval"]) == 2
        assert v["interval"][0] <= v["value"] <= v["interval"][1], k
    assert isinstance(out["warnings"], list) and isinstance(out["notes"], list)
    assert out["alpha"]["value"] == pytest.approx(synthetic.LAW["alpha"], abs=0.05)
    assert len(out["leave_one_budget_out"]) == iso.budget.nunique()


def test_compute_only_derives_tokens_and_says_so(iso):
    a = fit_table(iso, params="params", loss="loss", compute="compute", n_boot=0)
    b = fit_table(iso, params="params", loss="loss", tokens="tokens", n_boot=0)
    assert any("D = C / (6 N)" in n for n in a.notes)
    assert a.estimates["alpha"].value == pytest.approx(b.estimates["alpha"].value, rel=1e-6)


def test_approach2_json_has_minima_and_groups_by_compute(iso):
    out = json.loads(fit_table(iso, params="params", loss="loss", compute="compute", approach=2,
                               n_boot=30).to_json())
    assert {"a", "b", "minima"} <= set(out)
    assert len(out["minima"]) == iso.budget.nunique()
    assert {"budget", "n_opt", "d_opt", "edge"} <= set(out["minima"][0])
    assert out["a"]["value"] == pytest.approx(0.4516, abs=0.05)


def test_approach1_on_final_results_notes_it(iso):
    res = fit_table(iso, params="params", loss="loss", tokens="tokens", approach=1, n_boot=10)
    assert any("final point" in n for n in res.notes)
    json.loads(res.to_json())


def test_reads_csv_path(tmp_path, iso):
    p = tmp_path / "runs.csv"
    iso.to_csv(p, index=False)
    res = fit_table(p, params="params", loss="loss", compute="compute", approach=2, budget_col="budget", n_boot=0)
    assert res.approach == 2


def test_missing_column_names_it_and_lists_available(iso):
    with pytest.raises(AnalysisError) as e:
        fit_table(iso, params="n_params", loss="loss", tokens="tokens")
    assert "'n_params'" in str(e.value) and "tokens" in str(e.value) and "d_model" in str(e.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.assign(loss=np.where(d.index == 3, np.nan, d.loss)), "missing or infinite"),
        (lambda d: d.assign(tokens=np.where(d.index == 0, 0.0, d.tokens)), "must be > 0"),
        (lambda d: d.head(4), "at least 6 points"),
    ],
)
def test_bad_input_raises_analysis_error(iso, mutate, message):
    with pytest.raises(AnalysisError, match=message):
        fit_table(mutate(iso), params="params", loss="loss", tokens="tokens", n_boot=0)


def test_needs_tokens_or_compute_and_a_valid_approach(iso):
    with pytest.raises(AnalysisError, match="tokens column, a compute column"):
        fit_table(iso, params="params", loss="loss")
    with pytest.raises(AnalysisError, match="approach must be"):
        fit_table(iso, params="params", loss="loss", tokens="tokens", approach=4)
    assert issubclass(AnalysisError, ValueError)
