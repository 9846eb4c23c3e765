"""Ground truth exported by the simulator: well-formed, tied to real events, calibrated and predictive."""
import json

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata

from medscale.data.simulator.ground_truth import OUTCOME_NAMES, outcome_spec, read_ground_truth
from medscale.data.meds import MedsError
from medscale.data.simulator.outcome_labels import realize
from medscale.data.simulator import generate_cohort

N_SUBJECTS = 3000


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = generate_cohort(tmp_path_factory.mktemp("gt") / "meds", N_SUBJECTS, 3, n_shards=1, workers=1)
    truth = read_ground_truth(root)
    truth["label"] = realize(root, truth)
    events = pl.read_parquet(str(root / "data" / "**" / "*.parquet"))
    return root, truth, events


def auroc(y, p):
    ranks = rankdata(p)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_every_outcome_is_exported_with_well_formed_values(cohort):
    root, truth, _ = cohort
    assert set(truth["outcome"]) == set(OUTCOME_NAMES)
    probs = truth[truth["outcome"] != "next_year_cost"]["value"]
    assert ((probs > 0) & (probs < 1)).all()
    assert (truth[truth["outcome"] == "next_year_cost"]["value"] > 0).all()
    med = truth[truth["outcome"] == "med_start_30d"]
    assert med["target_code"].str.startswith("ATC//").all()
    assert truth[truth["outcome"] != "med_start_30d"]["target_code"].isna().all()
    outcomes = json.loads((root / "ground_truth" / "outcomes.json").read_text())["outcomes"]
    assert [o["name"] for o in outcomes] == OUTCOME_NAMES
    assert {o["signal"] for o in outcomes} == {"simple", "long_history", "mixed"}
    assert len(read_ground_truth(root, split="tuning", outcome="readmission_30d")) < (truth["outcome"] == "readmission_30d").sum()


def test_reader_errors(cohort, tmp_path):
    root, _, _ = cohort
    with pytest.raises(KeyError, match="unknown outcome"):
        read_ground_truth(root, outcome="mortality")
    with pytest.raises(MedsError, match="no ground_truth/ folder"):
        read_ground_truth(tmp_path)


PREDICTION_EVENT = {"in_hospital_death": "ADMISSION//INPATIENT", "long_stay_7d": "ADMISSION//INPATIENT",
                    "readmission_30d": "DISCHARGE//", "next_year_cost": "ENCOUNTER//WELLNESS",
                    "dx_ckd_1y": "ENCOUNTER//WELLNESS", "med_start_30d": "ICD10CM//"}


@pytest.mark.parametrize("outcome", sorted(PREDICTION_EVENT))
def test_prediction_times_are_times_of_the_triggering_event(cohort, outcome):
    _, truth, events = cohort
    rows = pl.from_pandas(truth[truth["outcome"] == outcome][["subject_id", "prediction_time"]]).with_columns(
        pl.col("prediction_time").cast(pl.Datetime("us")))
    trig = events.filter(pl.col("code").str.starts_with(PREDICTION_EVENT[outcome])).select(
        "subject_id", pl.col("time").alias("prediction_time")).unique()
    assert rows.height > 50
    assert rows.join(trig, on=["subject_id", "prediction_time"], how="anti").height == 0


def test_new_diagnosis_rows_only_for_subjects_without_the_disease_so_far(cohort):
    _, truth, events = cohort
    for name in ("dx_heart_failure_1y", "dx_diabetes_t2_1y"):
        codes = list(outcome_spec(name).codes)
        first = events.filter(pl.col("code").is_in(codes)).group_by("subject_id").agg(pl.col("time").min().alias("first"))
        rows = pl.from_pandas(truth[truth["outcome"] == name][["subject_id", "prediction_time"]]).with_columns(
            pl.col("prediction_time").cast(pl.Datetime("us")))
        joined = rows.join(first, on="subject_id")
        assert joined.height > 100
        assert (joined["first"] >= joined["prediction_time"]).all()


@pytest.mark.parametrize("outcome", [o for o in OUTCOME_NAMES if o != "next_year_cost"])
def test_probabilities_are_calibrated_and_predictive(cohort, outcome):
    _, truth, _ = cohort
    rows = truth[truth["outcome"] == outcome]
    p, y = rows["value"].to_numpy(), rows["label"].to_numpy()
    assert not np.isnan(y).any() and set(np.unique(y)) <= {0.0, 1.0}
    se = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(y.mean() - p.mean()) < 4 * se + 1e-3, (y.mean(), p.mean(), se)
    # per quintile of predicted risk
    edges = np.quantile(p, [0.2, 0.4, 0.6, 0.8])
    b = np.searchsorted(edges, p)
    for k in range(5):
        sel = b == k
        if sel.sum() < 30:
            continue
        se_k = np.sqrt((p[sel] * (1 - p[sel])).sum()) / sel.sum()
        assert abs(y[sel].mean() - p[sel].mean()) < 4.5 * se_k + 2e-3, (k, y[sel].mean(), p[sel].mean())
    if y.sum() >= 10:
        assert auroc(y, p) > 0.65


def test_expected_cost_matches_realized_claims(cohort):
    _, truth, _ = cohort
    rows = truth[truth["outcome"] == "next_year_cost"]
    expected, realized = rows["value"].to_numpy(), rows["label"].to_numpy()
    assert len(rows) > 5000
    assert abs(realized.mean() / expected.mean() - 1) < 0.04
    assert np.corrcoef(expected, realized)[0, 1] > 0.4


def test_long_history_outcome_depends_on_codes_from_years_before(cohort):
    """Heart-failure risk is higher for subjects whose family history was coded years earlier."""
    _, truth, events = cohort
    fh = events.filter(pl.col("code") == "ICD10CM//Z82.49").group_by("subject_id").agg(pl.col("time").min().alias("fh"))
    rows = pl.from_pandas(truth[truth["outcome"] == "dx_heart_failure_1y"][["subject_id", "prediction_time", "value"]])
    rows = rows.with_columns(pl.col("prediction_time").cast(pl.Datetime("us"))).join(fh, on="subject_id", how="left")
    old_fh = rows.filter(pl.col("fh") < pl.col("prediction_time") - pl.duration(days=5 * 365))
    no_fh = rows.filter(pl.col("fh").is_null())
    assert old_fh.height > 100
    assert old_fh["value"].mean() > 1.3 * no_fh["value"].mean()
