"""Label folders in the MEDS label schema: read into the frame the evaluation uses, refused clearly when
malformed (exit 2, the file and the column named, no traceback); predictions in meds-evaluation's schema."""
from datetime import datetime

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medscale.data.labels import LabelError, label_task_files, read_label_task
from medscale.data.meds import read_meds

T = [datetime(2020, 1, 1, h) for h in range(4)]


@pytest.fixture(scope="module")
def meds(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelmeds")
    for split, sid in (("train", 1), ("train", 2), ("held_out", 3)):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"subject_id": pa.array([sid] * 2, pa.int64()),
                                 "time": pa.array(T[:2], pa.timestamp("us")), "code": ["A", "B"],
                                 "numeric_value": pa.array([None, 1.0], pa.float32())}),
                       root / "data" / split / f"{sid}.parquet")
    return root


def _labels(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _good(folder, name="mortality"):
    _labels(folder / name / "shard_0.parquet", subject_id=pa.array([2, 1, 1], pa.int64()),
            prediction_time=pa.array([T[1], T[2], T[0]], pa.timestamp("us")),
            boolean_value=pa.array([True, False, True]), integer_value=pa.nulls(3, pa.int64()),
            float_value=pa.nulls(3, pa.float32()), categorical_value=pa.nulls(3, pa.string()))
    _labels(folder / name / "nested" / "shard_1.parquet", subject_id=pa.array([3], pa.int32()),
            prediction_time=pa.array([T[3]], pa.timestamp("ms")), boolean_value=pa.array([False]))
    return folder


def test_a_label_folder_reads_into_the_evaluation_frame(meds, tmp_path):
    folder = _good(tmp_path / "labels")
    _labels(folder / "los.parquet", subject_id=pa.array([1, 3], pa.int64()),
            prediction_time=pa.array(T[:2], pa.timestamp("us")), float_value=pa.array([2.5, 7.0], pa.float64()))
    assert list(label_task_files(folder)) == ["los", "mortality"]
    frame, kind = read_label_task(folder, "mortality", read_meds(meds))
    assert kind == "binary"
    assert frame["subject_id"].tolist() == [1, 1, 2, 3]                   # sorted by subject, then time
    assert frame["prediction_time"].tolist() == [pd.Timestamp(T[0]), pd.Timestamp(T[2]), pd.Timestamp(T[1]),
                                                 pd.Timestamp(T[3])]
    assert frame["boolean_value"].tolist() == [True, False, True, False]
    assert frame["split"].tolist() == ["train", "train", "train", "held_out"]
    assert frame["truth"].isna().all() and str(frame["prediction_time"].dtype) == "datetime64[us]"
    frame, kind = read_label_task(folder, "los", read_meds(meds))
    assert kind == "regression" and frame["float_value"].tolist() == [2.5, 7.0]


@pytest.mark.parametrize("columns, message", [
    (dict(prediction_time=pa.array([T[0]], pa.timestamp("us")), boolean_value=pa.array([True])),
     "column 'subject_id' is missing"),
    (dict(subject_id=pa.array([1], pa.int64()), prediction_time=pa.array(["2020-01-01"]), boolean_value=pa.array([True])),
     "column 'prediction_time' has type string, expected a timestamp"),
    (dict(subject_id=pa.array([1], pa.int64()), prediction_time=pa.array([T[0]], pa.timestamp("us")),
          boolean_value=pa.array([1], pa.int64())), "column 'boolean_value' has type int64, expected bool"),
    (dict(subject_id=pa.array([1, 99, 98], pa.int64()), prediction_time=pa.array(T[:3], pa.timestamp("us")),
          boolean_value=pa.array([True, False, True])), "2 subject\\(s\\) are not in the MEDS dataset"),
    (dict(subject_id=pa.array([1, 2], pa.int64()), prediction_time=pa.array(T[:2], pa.timestamp("us")),
          boolean_value=pa.array([True, None])), "'boolean_value' has 1 null"),
    (dict(subject_id=pa.array([1, 1], pa.int64()), prediction_time=pa.array([T[0], T[0]], pa.timestamp("us")),
          boolean_value=pa.array([True, False])), "different labels to the same subject"),
    (dict(subject_id=pa.array([1], pa.int64()), prediction_time=pa.array([T[0]], pa.timestamp("us")),
          categorical_value=pa.array(["x"])), "only categorical_value holds labels"),
])
def test_malformed_labels_are_refused_naming_the_file_and_column(meds, tmp_path, columns, message):
    from medscale.scaling.cli import app

    path = _labels(tmp_path / "labels" / "bad" / "0.parquet", **columns)
    with pytest.raises(LabelError, match=message):
        read_label_task(tmp_path / "labels", "bad", read_meds(meds))
    store = _store_pointing_at(meds, tmp_path)
    result = CliRunner().invoke(app, ["downstream", str(store), "--labels", str(tmp_path / "labels")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    assert path.name in " ".join(result.output.split())   # the file is named (rich may wrap the line)


def _store_pointing_at(meds, tmp_path):
    """A run store holding one finished run whose tokens were made from `meds` (no training needed to
    reach label validation)."""
    import json

    from medscale.data.token_store import tokenize_dataset
    from medscale.data.tokenizer import TokenizerConfig

    tokens = tokenize_dataset(meds, tmp_path / "tokens", TokenizerConfig(min_count=1), workers=1)
    run = tmp_path / "store" / "runs" / "decoder-000000000000"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(json.dumps({"objective": "decoder", "model": {"d_model": 8, "n_layers": 1},
                                                 "train": {"steps": 1, "tokens": 1, "seed": 0, "lr": 1e-3},
                                                 "data": {"token_dir": str(tokens), "dataset_id": "x"}}))
    (run / "status.jsonl").write_text(json.dumps({"state": "done"}) + "\n")
    return tmp_path / "store"


def test_an_empty_or_absent_label_folder_is_refused(meds, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelError, match="no label files"):
        label_task_files(tmp_path / "empty")
    with pytest.raises(LabelError, match="no such label folder"):
        label_task_files(tmp_path / "absent")


def test_a_spec_with_labels_names_its_tasks_and_refuses_zero_shot(tmp_path):
    from medscale.scaling.downstream import DownstreamSpec

    folder = _good(tmp_path / "labels")
    spec = DownstreamSpec.model_validate({"labels": str(folder)})
    assert spec.tasks == ["mortality"] and "labels" in spec.model_dump()
    assert "labels" not in DownstreamSpec.model_validate({"tasks": ["readmission_30d"]}).model_dump()
    with pytest.raises(ValueError, match="no labels for task"):
        DownstreamSpec.model_validate({"labels": str(folder), "tasks": ["readmission_30d"]})
    with pytest.raises(ValueError, match="zero_shot"):
        DownstreamSpec.model_validate({"labels": str(folder), "modes": ["probe", "zero_shot"]})


def test_predictions_follow_meds_evaluations_schema_and_metrics(tmp_path):
    from meds_evaluation.evaluate import evaluate_binary_classification
    from meds_evaluation.schema import PredictionSchema
    from sklearn.metrics import roc_auc_score

    from medscale.analysis.metrics import evaluate
    from medscale.scaling.downstream.predictions import write_predictions

    rng = np.random.default_rng(0)
    n = 200
    rows = pd.DataFrame({"subject_id": np.repeat(np.arange(50), 4), "prediction_time":
                         pd.date_range("2020-01-01", periods=n, freq="h").astype("datetime64[us]"),
                         "boolean_value": rng.random(n) < 0.3})
    score = np.clip(0.3 * rows["boolean_value"] + 0.7 * rng.random(n), 0, 1)
    ours = evaluate(rows["boolean_value"].astype(float), score, rows["subject_id"], n_boot=0)["auroc"][0]
    result = [{"run_id": "decoder-abc", "task": "t", "mode": "probe", "label_budget": "all", "seed": 0}]
    path = write_predictions(tmp_path, result, rows, score, "binary")
    assert path == tmp_path / "predictions" / "decoder-abc" / "t" / "probe_budget-all_seed-0.parquet"
    table = pq.read_table(path)
    PredictionSchema.align(table)   # raises on a schema meds-evaluation does not accept
    theirs = evaluate_binary_classification(pl.from_arrow(table))["samples_equally_weighted"]["roc_auc_score"]
    assert theirs == pytest.approx(ours, abs=1e-6)   # float32 probabilities: ties exactly as ours
    assert ours == pytest.approx(roc_auc_score(rows["boolean_value"], score))
