"""Task predicates per dataset (MEDS-DEV style): the same built-in task files give the same labels on the
simulator's codes and on a MIMIC-IV-style vocabulary once the predicates file is swapped."""
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medscale.data.tasks import (PREDICATES_DIR, SIMULATOR_PREDICATES, TaskError, builtin_task_names, extract_labels,
                                 load_task)

MIMIC = PREDICATES_DIR / "mimic_iv_example.yaml"
TO_MIMIC = {"ADMISSION//INPATIENT": "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM",
            "DISCHARGE//HOME": "HOSPITAL_DISCHARGE//HOME",
            "DISCHARGE//SNF": "HOSPITAL_DISCHARGE//SKILLED NURSING FACILITY",
            "DISCHARGE//REHAB": "HOSPITAL_DISCHARGE//REHAB",
            "ICD10CM//N18.3": "DIAGNOSIS//ICD//10//N183",
            "ATC//C09CA01": "MEDICATION//START//Losartan Potassium",
            "MEDS_DEATH": "MEDS_DEATH", "MEDS_BIRTH": "MEDS_BIRTH", "LAB//51221": "LAB//51221"}
EVENTS = {   # subject -> (split, [(time, simulator code)])
    1: ("train", [("1950-01-01", "MEDS_BIRTH"), ("2015-01-01", "ADMISSION//INPATIENT"), ("2015-01-02", "ICD10CM//N18.3"),
                  ("2015-01-05", "LAB//51221"), ("2015-01-10", "ATC//C09CA01"), ("2015-01-12", "DISCHARGE//HOME"),
                  ("2015-02-01", "ADMISSION//INPATIENT"), ("2015-02-03", "MEDS_DEATH")]),
    2: ("train", [("1960-05-05", "MEDS_BIRTH"), ("2016-03-01", "ADMISSION//INPATIENT"), ("2016-03-03", "DISCHARGE//SNF"),
                  ("2016-06-01", "ADMISSION//INPATIENT"), ("2016-06-02", "ICD10CM//N18.3"),
                  ("2016-06-15", "DISCHARGE//REHAB"), ("2016-09-01", "ADMISSION//INPATIENT"),
                  ("2016-09-04", "DISCHARGE//HOME")]),
    3: ("held_out", [("2017-01-01", "ADMISSION//INPATIENT"), ("2017-01-20", "MEDS_DEATH")]),
}
TASKS = ["in_hospital_mortality", "long_los_7d", "readmission_30d", "med_start_ckd_30d", "med_start_30d"]


def _write(root, vocabulary):
    for sid, (split, rows) in EVENTS.items():
        table = pa.table({"subject_id": pa.array([sid] * len(rows), pa.int64()),
                          "time": pa.array([datetime.fromisoformat(t) for t, _ in rows], pa.timestamp("us")),
                          "code": pa.array([vocabulary(c) for _, c in rows], pa.string()),
                          "numeric_value": pa.array([None] * len(rows), pa.float32())})
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / split / f"{sid}.parquet")
    return root


@pytest.fixture(scope="module")
def two_vocabularies(tmp_path_factory):
    base = tmp_path_factory.mktemp("vocabularies")
    return _write(base / "simulator", lambda c: c), _write(base / "mimic", TO_MIMIC.__getitem__)


@pytest.mark.parametrize("name", TASKS)
def test_swapping_the_predicates_file_gives_the_same_labels_on_other_codes(two_vocabularies, name):
    simulator, mimic = two_vocabularies
    ours = extract_labels(simulator, load_task(name), use_ground_truth=False)
    theirs = extract_labels(mimic, load_task(name, predicates=MIMIC), use_ground_truth=False)
    assert len(ours) > 0
    pd.testing.assert_frame_equal(ours, theirs)
    # and the simulator's predicates find nothing in MIMIC codes: the labels really come from the file
    assert extract_labels(mimic, load_task(name), use_ground_truth=False).empty


def test_the_labels_are_the_ones_the_events_say(two_vocabularies):
    simulator, _ = two_vocabularies
    mortality = extract_labels(simulator, "in_hospital_mortality", use_ground_truth=False)
    assert mortality.set_index("subject_id")["boolean_value"].groupby(level=0).any().to_dict() == {1: True, 2: False, 3: True}
    readmit = extract_labels(simulator, "readmission_30d", use_ground_truth=False)
    # subject 1: home discharge then readmitted in 20 days; subject 2: SNF then 90 days, home then nothing
    assert readmit["boolean_value"].tolist() == [True, False, False]


def test_every_builtin_task_loads_with_both_files_except_where_a_predicate_is_missing():
    for name in builtin_task_names():
        assert load_task(name).predicates == SIMULATOR_PREDICATES
        if name == "next_year_cost":
            with pytest.raises(TaskError, match="claims"):
                load_task(name, predicates=MIMIC)
        else:
            load_task(name, predicates=MIMIC).label_rule()


def test_task_files_of_ones_own_keep_inline_predicates(tmp_path):
    path = tmp_path / "my_task.yaml"
    path.write_text("predicates:\n  adm: {code: ADMISSION//INPATIENT}\n  death: {code: MEDS_DEATH}\ntrigger: adm\n"
                    "windows:\n  w:\n    start: trigger\n    end: start + 30d\n    start_inclusive: false\n"
                    "    end_inclusive: true\n    label: death\n    index_timestamp: start\n")
    task = load_task(path)
    assert task.predicates is None and task.label_rule().label("MEDS_DEATH")
    with pytest.raises(TaskError, match="no such predicates file"):
        load_task(path, predicates=tmp_path / "absent.yaml")
