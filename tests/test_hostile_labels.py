"""Hostile label folders for `medscale downstream --labels` (issue 33): labels of one split only, labels of one
class only and an empty folder each end in one message naming the task and the folder (exit 2, no
traceback); results from two label folders in one store carry their source, and the analysis keeps the two
apart instead of pooling two AUROCs of the same run, task and mode."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_spec


@pytest.fixture(scope="module")
def store(tiny_dataset, tmp_path_factory) -> Path:
    """A run store holding one finished tiny decoder."""
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.sweep.store import RunStore
    from medscale.scaling.run.train import execute_run

    meds, tokens = tiny_dataset
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    runs = RunStore(tmp_path_factory.mktemp("labels_store"))
    (config,) = expand(parse_spec(tiny_spec(meds)), token_dir=str(tokens), vocab_size=vocab, dataset_id="tiny")
    assert execute_run(runs.ensure(config), devices=1) == "done"
    return runs.root


def _labels(folder: Path, meds: Path, value, splits=("train", "tuning", "held_out")) -> Path:
    """A label folder with one task, mort: one row per subject of `splits`, label value(i) for the i-th."""
    subjects = pl.read_parquet(meds / "metadata" / "subject_splits.parquet").to_pandas()
    subjects = subjects[subjects["split"].isin(splits)].reset_index(drop=True)
    (folder / "mort").mkdir(parents=True)
    pq.write_table(pa.table({
        "subject_id": pa.array(subjects["subject_id"].to_numpy(np.int64)),
        "prediction_time": pa.array(pd.to_datetime(["2020-01-01"] * len(subjects)), pa.timestamp("us")),
        "boolean_value": pa.array([bool(value(i)) for i in range(len(subjects))])}), folder / "mort" / "0.parquet")
    return folder


def _downstream(store: Path, labels: Path, tmp_path: Path) -> tuple[int, str]:
    from medscale.scaling.cli import app

    spec = tmp_path / "downstream.yaml"
    spec.write_text(yaml.safe_dump({"modes": ["probe", "lightgbm"], "n_boot": 10, "max_samples": 100}))
    result = CliRunner().invoke(app, ["downstream", str(store), "--spec", str(spec), "--labels", str(labels)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def test_labels_of_the_train_split_only_name_the_task_the_folder_and_the_fix(store, tiny_dataset, tmp_path):
    labels = _labels(tmp_path / "train_only", tiny_dataset[0], lambda i: i % 3 == 0, splits=("train",))
    code, text = _downstream(store, labels, tmp_path)
    assert code == 2, text
    assert f"task mort ({labels / 'mort'})" in text and "0 test samples (test_splits held_out)" in text, text
    assert "cover the splits train" in text and "test_splits" in text
    assert not (store / "downstream.csv").exists()


def test_labels_of_one_class_say_so_with_the_counts(store, tiny_dataset, tmp_path):
    labels = _labels(tmp_path / "one_class", tiny_dataset[0], lambda i: False)
    code, text = _downstream(store, labels, tmp_path)
    assert code == 2, text   # was: exit 0, "0 rows", no reason
    assert f"task mort ({labels / 'mort'}): one class only (fit pool: " in text and ", 0 true" in text, text
    assert "needs both classes" in text
    assert not (store / "downstream.csv").exists()


def test_an_empty_label_folder_is_named_without_pydantics_text(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = _downstream(store, empty, tmp_path)
    assert code == 2, text
    assert f"{empty}: no label files" in text and "<task>/*.parquet" in text
    assert "validation error" not in text and "pydantic" not in text and "input_value" not in text


def test_two_label_folders_in_one_store_keep_their_source(store, tiny_dataset, tmp_path):
    from medscale.scaling.downstream.evaluate import downstream_data, read_downstream

    first = _labels(tmp_path / "a", tiny_dataset[0], lambda i: i % 3 == 0).resolve()
    second = _labels(tmp_path / "b", tiny_dataset[0], lambda i: i % 2 == 0).resolve()
    code, text = _downstream(store, first, tmp_path)
    assert code == 0 and "note:" not in text, text
    code, text = _downstream(store, second, tmp_path)
    assert code == 0, text
    assert f"task mort has results from 2 label sources ({first}, {second}" in text

    table = read_downstream(store)
    auroc = table[table["metric"] == "auroc"]
    assert set(auroc["labels"]) == {str(first), str(second)}
    assert len(auroc) == 4 and not auroc.duplicated(["run_id", "task", "mode", "labels"]).any()
    for mode in ("probe",):   # each source keeps its own predictions file (the second does not overwrite the first)
        files = sorted((Path(store) / "predictions").rglob(f"{mode}_budget-*_labels-*.parquet"))
        assert len({f.name for f in files}) == 2, files
    results = downstream_data(store, table).results
    shown = results[results["metric"] == "auroc"]
    assert set(shown["task"]) == {f"mort [{first}]", f"mort [{second}]"}   # two tasks to the analysis, not one mean
    for source in (first, second):
        mine = auroc[auroc["labels"] == str(source)].sort_values("mode")["value"].to_numpy()
        got = shown[shown["task"] == f"mort [{source}]"].sort_values("mode")["value"].to_numpy()
        np.testing.assert_allclose(got, mine)
