"""Predictions in meds-evaluation's schema, one parquet file per (run, task, mode, label budget, seed).

    <store>/predictions/<run_id>/<task>/<mode>_budget-<b>_seed-<s>[_labels-<h>].parquet

where <h> (8 hex digits of the label folder's path) names the source of tasks read from a MEDS label folder, so
that two label folders evaluated into one store keep two files instead of the second overwriting the first.

Binary tasks: the MEDS label schema plus `predicted_boolean_probability` (float32, the model's probability
of the positive class) and `predicted_boolean_value` (probability >= 0.5), exactly what
`meds_evaluation.schema.PredictionSchema` validates, so `meds-evaluation-cli` (or
`meds_evaluation.evaluate.evaluate_binary_classification`) reads them as they are. Regression tasks keep
the label schema's `float_value` and add `predicted_float_value` (meds-evaluation has no regression schema
yet). Written by the evaluation step before it is marked done, so a finished step has its file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medscale.atomic import write_with

BINARY_SCHEMA = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                           ("boolean_value", pa.bool_()), ("predicted_boolean_value", pa.bool_()),
                           ("predicted_boolean_probability", pa.float32())])
REGRESSION_SCHEMA = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                               ("float_value", pa.float64()), ("predicted_float_value", pa.float64())])


def predictions_path(store_root, run_id: str, task: str, mode: str, budget, seed: int, labels: str = "") -> Path:
    safe_run = str(run_id).replace(":", "_")   # baseline:<dataset> rows
    source = f"_labels-{hashlib.sha1(labels.encode()).hexdigest()[:8]}" if labels else ""
    return (Path(store_root) / "predictions" / safe_run / task
            / f"{mode}_budget-{budget}_seed-{seed}{source}.parquet")


def predictions_table(rows: pd.DataFrame, score: np.ndarray, kind: str) -> pa.Table:
    """The prediction table of label rows (subject_id, prediction_time, boolean_value/float_value) and scores."""
    score = np.asarray(score, dtype=np.float64)
    ids = pa.array(rows["subject_id"].to_numpy(dtype=np.int64))
    times = pa.array(rows["prediction_time"].to_numpy().astype("datetime64[us]"), pa.timestamp("us"))
    if kind == "binary":
        return pa.table([ids, times, pa.array(rows["boolean_value"].to_numpy().astype(bool)),
                         pa.array(score >= 0.5), pa.array(score.astype(np.float32))], schema=BINARY_SCHEMA)
    return pa.table([ids, times, pa.array(rows["float_value"].to_numpy(dtype=np.float64)), pa.array(score)],
                    schema=REGRESSION_SCHEMA)


def write_predictions(store_root, result_rows: list[dict], rows: pd.DataFrame, score: np.ndarray, kind: str) -> Path:
    """Write the predictions behind `result_rows` (the evaluation's rows: run_id, task, mode, ...)."""
    first = result_rows[0]
    path = predictions_path(store_root, first["run_id"], first["task"], first["mode"], first["label_budget"],
                            first["seed"], first.get("labels") or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = predictions_table(rows.iloc[: len(score)], score, kind)
    write_with(path, lambda p: pq.write_table(table, p))
    return path
