"""Label folders in the MEDS label schema, as ACES and MEDS-DEV write them: read and validated like MEDS data.

    labels/<task>/*.parquet          one folder per task (files anywhere below it, e.g. per shard)
    labels/<task>.parquet            or one file per task

Each file holds the MEDS label schema (meds.LabelSchema, v0.4): `subject_id` (integer), `prediction_time`
(timestamp), and the label in `boolean_value` (bool), `integer_value` (integer), `float_value` (float) or
`categorical_value` (string); extra columns are ignored. A task is binary when `boolean_value` holds its
labels and regression when `float_value` or `integer_value` does; categorical tasks are refused (no
downstream head for them yet). Problems raise `LabelError` (a `MedsError`: exit status 2) naming the file,
the column and what to do: an unreadable file, a missing or mistyped column, nulls, contradictory
duplicates, or subjects absent from the MEDS dataset the models were trained on.

`read_label_task` returns the label frame that data/tasks.extract_labels returns for an ACES task:
subject_id, prediction_time (datetime64[us]), boolean_value, float_value, split (from the dataset) and
truth (NaN: real data has no ground truth), sorted by subject and time; and the task's kind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medscale.data.meds import MedsDataset, MedsError

VALUE_COLUMNS = ("boolean_value", "integer_value", "float_value", "categorical_value")
_TYPE_CHECKS = {
    "subject_id": (pa.types.is_integer, "an integer type (int64)"),
    "prediction_time": (pa.types.is_timestamp, "a timestamp (pyarrow timestamp('us'))"),
    "boolean_value": (pa.types.is_boolean, "bool"),
    "integer_value": (pa.types.is_integer, "an integer type (int64)"),
    "float_value": (pa.types.is_floating, "float32 or float64"),
    "categorical_value": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                          or pa.types.is_dictionary(t), "string"),
}


class LabelError(MedsError):
    """A label folder or file that cannot be used; the message names the file, the column and the fix."""


def label_task_files(label_dir) -> dict[str, list[Path]]:
    """task name -> its parquet files: each sub-folder holding parquet files, and each top-level file."""
    root = Path(label_dir)
    if not root.is_dir():
        raise LabelError(f"{root}: no such label folder; give a folder holding one sub-folder (or .parquet file) "
                         "per task in the MEDS label schema")
    tasks: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*.parquet") if not p.name.startswith("."))
            if files:
                tasks[entry.name] = files
        elif entry.suffix == ".parquet":
            tasks[entry.name.split(".")[0]] = [entry]
    if not tasks:
        raise LabelError(f"{root}: no label files (expected <task>/*.parquet or <task>.parquet in the MEDS "
                         "label schema: subject_id, prediction_time, boolean_value/integer_value/float_value)")
    return tasks


def _read_file(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise LabelError(f"{path}: cannot be read as parquet ({type(err).__name__}: {err}); re-export it") from None
    for column in ("subject_id", "prediction_time"):
        if column not in table.column_names:
            raise LabelError(f"{path}: column '{column}' is missing (columns present: {', '.join(table.column_names)}). "
                             "MEDS label files need subject_id, prediction_time and a value column "
                             f"({', '.join(VALUE_COLUMNS)}); rename the column that holds it.")
    for column in ("subject_id", "prediction_time") + VALUE_COLUMNS:
        if column not in table.column_names:
            continue
        typ = table.schema.field(column).type
        check, expected = _TYPE_CHECKS[column]
        if not (check(typ) or (column in VALUE_COLUMNS and pa.types.is_null(typ))):
            raise LabelError(f"{path}: column '{column}' has type {typ}, expected {expected}. Cast it when "
                             "writing the labels.")
        if column in ("subject_id", "prediction_time") and table[column].null_count:
            raise LabelError(f"{path}: column '{column}' has {table[column].null_count:,} null(s); every label "
                             "row needs a subject and a prediction time")
    return table


def _kind(path: Path, table: pa.Table) -> str:
    def filled(column: str) -> bool:
        return column in table.column_names and table[column].null_count < table.num_rows

    if filled("boolean_value"):
        return "binary"
    if filled("float_value") or filled("integer_value"):
        return "regression"
    if filled("categorical_value"):
        raise LabelError(f"{path}: only categorical_value holds labels; medscale evaluates binary (boolean_value) "
                         "and regression (float_value/integer_value) tasks")
    raise LabelError(f"{path}: no label values: boolean_value, integer_value and float_value are all absent or null")


def read_label_task(label_dir, task: str, dataset: MedsDataset) -> tuple[pd.DataFrame, str]:
    """(the validated label frame of one task of a label folder, its kind 'binary' or 'regression')."""
    files = label_task_files(label_dir)
    if task not in files:
        raise LabelError(f"{label_dir}: no labels for task {task!r} (tasks there: {', '.join(files)})")
    frames, kinds = [], {}
    for path in files[task]:
        table = _read_file(path)
        if table.num_rows == 0:
            continue
        kind = kinds[path] = _kind(path, table)
        if kind == "binary":
            value_col = "boolean_value"
            values = table[value_col]
        else:
            value_col = "float_value" if "float_value" in table.column_names and \
                table["float_value"].null_count < table.num_rows else "integer_value"
            values = table[value_col].cast(pa.float64())
        if values.null_count:
            raise LabelError(f"{path}: column '{value_col}' has {values.null_count:,} null(s) among "
                             f"{table.num_rows:,} rows; drop the unlabelled rows")
        ids = table["subject_id"].cast(pa.int64()).to_numpy()
        known = np.isin(ids, dataset.subject_ids)
        if not known.all():
            absent = np.unique(ids[~known])
            raise LabelError(f"{path}: {absent.size:,} subject(s) are not in the MEDS dataset at {dataset.root} "
                             f"(e.g. {', '.join(map(str, absent[:5].tolist()))}); labels must be for subjects of "
                             "the dataset the models were trained on (check you gave the right --labels and MEDS root)")
        frame = pd.DataFrame({
            "subject_id": ids,
            "prediction_time": pc.cast(table["prediction_time"], pa.timestamp("us")).to_numpy(),
            "boolean_value": values.to_numpy(zero_copy_only=False).astype(bool) if kind == "binary" else None,
            "float_value": np.nan if kind == "binary" else values.to_numpy(),
            "_file": str(path),
        })
        frames.append(frame)
    if not frames:
        raise LabelError(f"{label_dir}/{task}: the label files hold no rows")
    if len(set(kinds.values())) > 1:
        raise LabelError(f"{label_dir}/{task}: files disagree on the task's kind "
                         f"({', '.join(f'{p.name}: {k}' for p, k in kinds.items())})")
    kind = next(iter(kinds.values()))
    labels = pd.concat(frames, ignore_index=True)
    value = "boolean_value" if kind == "binary" else "float_value"
    labels = labels.drop_duplicates(["subject_id", "prediction_time", value])
    clash = labels.duplicated(["subject_id", "prediction_time"], keep=False)
    if clash.any():
        row = labels[clash].iloc[0]
        files = sorted(set(labels.loc[clash, "_file"]))
        raise LabelError(f"{', '.join(files)}: {int(clash.sum())} rows give different labels to the same subject and "
                         f"prediction time (e.g. subject {row['subject_id']} at {row['prediction_time']}); keep one")
    labels["prediction_time"] = labels["prediction_time"].astype("datetime64[us]")
    labels["split"] = dataset.split_of(labels["subject_id"].to_numpy())
    labels["truth"] = np.nan
    labels = labels.sort_values(["subject_id", "prediction_time"], kind="stable").reset_index(drop=True)
    return labels[["subject_id", "prediction_time", "boolean_value", "float_value", "split", "truth"]], kind
