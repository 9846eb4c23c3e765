"""Built-in ACES tasks: run by the ACES package, labels equal the simulator's definitions, no leaks."""
import re

import numpy as np
import pandas as pd
import pytest

from medscale.data.simulator.ground_truth import _family_codes, outcome_spec
from medscale.data.simulator.outcome_labels import realize
from medscale.data.tasks import TaskError, builtin_task_names, extract_labels, label_values, load_task

REQUIRED = {"in_hospital_mortality", "readmission_30d", "long_los_7d", "next_year_cost", "med_start_30d",
            "dx_heart_failure_1y", "dx_ckd_1y", "dx_diabetes_t2_1y"}


def test_builtin_tasks_cover_the_issue_and_point_at_simulator_outcomes():
    names = set(builtin_task_names())
    assert REQUIRED <= names
    for name in names:
        task = load_task(name)
        assert task.ground_truth is not None, name
        outcome_spec(task.ground_truth)  # a real simulator outcome
    assert load_task("next_year_cost").kind == "regression"
    assert load_task("med_start_30d").parts and load_task("long_los_7d").negate


@pytest.mark.parametrize("family, task", [("heart_failure", "dx_heart_failure_1y"), ("ckd", "dx_ckd_1y"),
                                          ("diabetes_t2", "dx_diabetes_t2_1y"), ("hypertension", "dx_hypertension_1y"),
                                          ("cad", "dx_cad_1y"), ("copd", "dx_copd_1y"),
                                          ("atrial_fibrillation", "dx_atrial_fibrillation_1y")])
def test_diagnosis_regexes_match_exactly_the_simulator_family(family, task):
    from medscale.data.simulator.codebook import codebook

    cfg = load_task(task).aces_config()
    regex = cfg.predicates[cfg.windows[cfg.label_window].label].code["regex"]
    matched = {c for c in codebook().codes if re.search(regex, c)}
    assert matched == set(_family_codes(family))


@pytest.mark.parametrize("name", sorted(REQUIRED - {"med_start_30d"}) + ["med_start_hypertension_30d"])
def test_aces_labels_equal_the_simulators_realized_outcomes(tiny_dataset, name):
    meds, _ = tiny_dataset
    task = load_task(name)
    labels = extract_labels(meds, task)
    assert len(labels) > 0 and labels["truth"].notna().all()
    assert set(labels["split"]) <= {"train", "tuning", "held_out"}
    truth = pd.DataFrame({"subject_id": labels["subject_id"], "prediction_time": labels["prediction_time"],
                          "outcome": task.ground_truth, "value": labels["truth"], "target_code": task.target_code})
    np.testing.assert_allclose(label_values(labels, task), realize(meds, truth))


def test_union_task_is_the_union_of_its_parts(tiny_dataset):
    meds, _ = tiny_dataset
    union = extract_labels(meds, "med_start_30d")
    parts = [extract_labels(meds, p) for p in load_task("med_start_30d").parts]
    assert len(union) == len(pd.concat(parts).drop_duplicates(["subject_id", "prediction_time"]))
    assert union["boolean_value"].isin([True, False]).all()


def test_without_ground_truth_every_aces_row_is_kept(tiny_dataset):
    meds, _ = tiny_dataset
    with_truth = extract_labels(meds, "readmission_30d")
    without = extract_labels(meds, "readmission_30d", use_ground_truth=False)
    assert len(without) >= len(with_truth) and without["truth"].isna().all()


def _write_task(tmp_path, label_window: str) -> str:
    path = tmp_path / "leaky.yaml"
    path.write_text(f"""
predicates:
  admission: {{code: "ADMISSION//INPATIENT"}}
  death: {{code: "MEDS_DEATH"}}
trigger: admission
windows:
  next:
    start: trigger
    end: start + 30d
{label_window}
    end_inclusive: true
    label: death
    index_timestamp: start
""")
    return str(path)


def test_a_label_window_containing_the_prediction_time_is_refused(tmp_path):
    with pytest.raises(TaskError, match="start_inclusive: false"):
        load_task(_write_task(tmp_path, "    start_inclusive: true"))
    assert load_task(_write_task(tmp_path, "    start_inclusive: false")).kind == "binary"


def test_unknown_task_names_list_the_builtins():
    with pytest.raises(TaskError, match="in_hospital_mortality"):
        load_task("no_such_task")
