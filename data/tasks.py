"""Downstream tasks: ACES task files in, MEDS label tables out (with the simulator's ceiling when known).

A task is an ACES configuration (https://eventstreamaces.readthedocs.io): predicates, a trigger and
windows, read and run by the `es-aces` package itself. As MEDS-DEV organises them, the built-in task files
name their predicates and a per-dataset predicates file defines them (`TaskExtractorConfig.load(task,
predicates_path)`): `task_configs/predicates/simulator.yaml` for the simulator (the default for built-in
tasks), `task_configs/predicates/mimic_iv_example.yaml` as a documented example for MIMIC-IV codes; the
same task runs on a dataset with other codes by passing that dataset's file (`load_task(name,
predicates=PATH)`, `predicates:` in the downstream spec). A task file of one's own may define its
predicates inline (no predicates file) or take them from a file too (the file's definitions win). Tasks run
through ACES (`aces.config.TaskExtractorConfig.load`, `aces.predicates.get_predicates_df`,
`aces.query.query`, one MEDS shard at a time). ACES ignores a
file's `metadata:` block; medscale reads `metadata.medscale` for what ACES cannot say:

    ground_truth: <outcome>   the simulator outcome (data/ground_truth.py) whose true probability at the
                              same (subject, prediction_time) is the task's ceiling
    target_code: <code>       keep only ground-truth rows with this target_code (medication starts)
    negate: true              the label is NOT the ACES label (long stay = "no discharge within 7 days")
    value: sum                regression: the label is the sum of the label predicate's numeric_value
                              over the label window (ACES only counts events)
    union: [task, ...]        a pooled task: the union of the rows of these tasks (no ACES block itself)

Rules medscale enforces, so that no event after the prediction time can reach a model (data/history.py
keeps the events at or before it): the prediction time is the trigger's time (`index_timestamp: start`
of a window starting at `trigger`), and the label window starts at the trigger and excludes it
(`start: trigger`, `start_inclusive: false`), so every labelled event is strictly after the input's
last event. The simulator's check-up outcomes are defined on [t, t+H) and ours on (t, t+H]; they agree
because its outcome events never fall on the check-up minute or on t + H (see data/ground_truth.py).

`extract_labels(meds_root, task)` returns one row per sample: subject_id, prediction_time (datetime64[us]),
boolean_value (binary tasks) or float_value (regression), split, and `truth` (the simulator's
probability/expected value; NaN without ground truth). With ground truth, only rows present in both
ACES's output and the ground truth are kept (the simulator drops prediction times whose horizon runs
past the end of follow-up), so the ceiling is defined for every evaluated sample.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import yaml

TASK_DIR = Path(__file__).with_name("task_configs")
PREDICATES_DIR = TASK_DIR / "predicates"
SIMULATOR_PREDICATES = PREDICATES_DIR / "simulator.yaml"
_DURATION = re.compile(r"^\s*start\s*\+\s*(\d+(?:\.\d+)?)\s*(d|h|m|s|y)\s*$")
_EVENT_BOUND = re.compile(r"^\s*start\s*->\s*(\w+)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


class TaskError(ValueError):
    """A task file medscale cannot use; the message names the file and what to change."""


@dataclass(frozen=True)
class LabelRule:
    """The label window in terms a generated trajectory can be checked against (zero-shot).

    label codes: does a code satisfy the label predicate. horizon_s: the window ends this long after the
    prediction time (None when it ends at the first `end` event instead). The label counts events in
    (t, t + horizon] or (t, first end event].
    """
    label: "CodeMatcher"
    horizon_s: float | None
    end: "CodeMatcher | None"
    end_inclusive: bool
    negate: bool
    value_sum: bool


@dataclass(frozen=True)
class CodeMatcher:
    """A plain ACES predicate (code, regex or any-of) or an or() of them, as a test on code strings."""
    exact: frozenset = frozenset()
    regexes: tuple = ()

    def __call__(self, code: str) -> bool:
        return code in self.exact or any(re.search(r, code) for r in self.regexes)

    def ids(self, vocab: list[str]) -> np.ndarray:
        return np.array([i for i, c in enumerate(vocab) if self(c)], dtype=np.int64)


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    description: str
    ground_truth: str | None = None
    target_code: str | None = None
    negate: bool = False
    value: str | None = None
    parts: tuple["Task", ...] = field(default_factory=tuple)
    predicates: Path | None = None   # the dataset's predicates file (None: the task file's own)

    @property
    def kind(self) -> str:
        return "regression" if self.value == "sum" or any(p.value for p in self.parts) else "binary"

    def aces_config(self):
        if self.parts:
            raise TaskError(f"{self.path}: {self.name} is a union of tasks and has no ACES configuration itself")
        preds = self.predicates
        return _aces_config(str(self.path), self.path.read_text(), str(preds or ""),
                            preds.read_text() if preds else "")

    def label_rule(self) -> LabelRule:
        """How the label reads off a continuation (for zero-shot); union tasks use their first part's rule
        with the label codes of all parts."""
        if self.parts:
            rules = [p.label_rule() for p in self.parts]
            first = rules[0]
            if any((r.horizon_s, r.negate, r.value_sum) != (first.horizon_s, first.negate, first.value_sum)
                   for r in rules):
                raise TaskError(f"{self.path}: the parts of {self.name} have different label windows")
            merged = CodeMatcher(frozenset().union(*(r.label.exact for r in rules)),
                                 tuple(x for r in rules for x in r.label.regexes))
            return LabelRule(merged, first.horizon_s, first.end, first.end_inclusive, False, first.value_sum)
        cfg = self.aces_config()
        window = cfg.windows[cfg.label_window]
        end = window.end or ""
        m_time, m_event = _DURATION.match(end), _EVENT_BOUND.match(end)
        if m_time:
            horizon, end_matcher = float(m_time.group(1)) * _UNIT_SECONDS[m_time.group(2)], None
        elif m_event:
            horizon, end_matcher = None, _matcher(cfg, m_event.group(1), self.path)
        else:
            raise TaskError(f"{self.path}: label window end {end!r} is neither 'start + <duration>' nor "
                            "'start -> <predicate>'")
        return LabelRule(_matcher(cfg, window.label, self.path), horizon, end_matcher, bool(window.end_inclusive),
                         self.negate, self.value == "sum")


@lru_cache(maxsize=64)
def _aces_config(path: str, text: str, predicates: str = "", predicates_text: str = ""):
    """ACES's parse of the task file at `path` with the predicates file `predicates` (cached by paths and
    contents)."""
    from aces import config as aces_config  # noqa: PLC0415  (heavy: hydra, bigtree)

    with _quiet_aces():
        try:
            return aces_config.TaskExtractorConfig.load(Path(path), Path(predicates) if predicates else None)
        except KeyError as err:   # ACES: a referenced predicate is defined nowhere
            where = f"the predicates file {predicates}" if predicates else "the task file (no predicates file given)"
            raise TaskError(f"{path}: {err.args[0] if err.args else err} Define it in {where}, or pass a "
                            "predicates file that does (load_task(..., predicates=PATH), `predicates:` in "
                            "the downstream spec).") from None


class _quiet_aces:
    """ACES logs every step at INFO and warns on uniform labels; keep a sweep's output readable."""

    def __enter__(self):
        self.logger = logging.getLogger("aces")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _matcher(cfg, name: str, path: Path) -> CodeMatcher:
    pred = cfg.predicates.get(name)
    if pred is None:
        raise TaskError(f"{path}: predicate {name!r} is not defined")
    if hasattr(pred, "expr"):
        if not pred.is_or:
            raise TaskError(f"{path}: predicate {name!r} is an and(); only or() can be read off a code sequence")
        parts = [_matcher(cfg, p, path) for p in pred.input_predicates]
        return CodeMatcher(frozenset().union(*(p.exact for p in parts)), tuple(r for p in parts for r in p.regexes))
    if pred.value_min is not None or pred.value_max is not None or pred.other_cols:
        raise TaskError(f"{path}: predicate {name!r} has value or column conditions; zero-shot reads codes only")
    code = pred.code
    if isinstance(code, str):
        return CodeMatcher(frozenset([code]))
    if "regex" in code:
        return CodeMatcher(regexes=(code["regex"],))
    return CodeMatcher(frozenset(code["any"]))


def builtin_task_names() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_task(name_or_path, predicates=None) -> Task:
    """A built-in task by name (data/task_configs/<name>.yaml) or any task file by path, with its predicates
    from `predicates` (a dataset's predicates file; default: the simulator's for built-in tasks, none for
    other files)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TASK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise TaskError(f"no task {name_or_path!r}: give a file path or one of {', '.join(builtin_task_names())}")
    if predicates is None and path.resolve().parent == TASK_DIR.resolve():
        predicates = SIMULATOR_PREDICATES
    if predicates is not None:
        predicates = Path(predicates)
        if not predicates.is_file():
            raise TaskError(f"{predicates}: no such predicates file (a YAML file with `predicates:`, e.g. "
                            f"{SIMULATOR_PREDICATES})")
    raw = yaml.safe_load(path.read_text()) or {}
    meta = ((raw.get("metadata") or {}).get("medscale") or {})
    unknown = set(meta) - {"ground_truth", "target_code", "negate", "value", "union"}
    if unknown:
        raise TaskError(f"{path}: unknown metadata.medscale keys {sorted(unknown)}")
    if meta.get("value") not in (None, "sum"):
        raise TaskError(f"{path}: metadata.medscale.value must be 'sum', got {meta['value']!r}")
    parts = tuple(load_task(path.parent / f"{p}.yaml", predicates) for p in meta.get("union", []))
    task = Task(name=path.stem, path=path, description=" ".join(str(raw.get("description", "")).split()),
                ground_truth=meta.get("ground_truth"), target_code=meta.get("target_code"),
                negate=bool(meta.get("negate", False)), value=meta.get("value"), parts=parts,
                predicates=predicates)
    if not parts:
        _check_no_leak(task)
    elif "trigger" in raw:
        raise TaskError(f"{path}: a union task lists its parts and has no trigger/windows of its own")
    return task


def _check_no_leak(task: Task) -> None:
    cfg = task.aces_config()
    if cfg.label_window is None:
        raise TaskError(f"{task.path}: no window has a `label:`")
    if cfg.index_timestamp_window is None:
        raise TaskError(f"{task.path}: no window has `index_timestamp:`; medscale needs it to be the trigger time")
    iw = cfg.windows[cfg.index_timestamp_window]
    if not (iw.start == "trigger" and iw.index_timestamp == "start"):
        raise TaskError(f"{task.path}: the prediction time must be the trigger: put `index_timestamp: start` on a "
                        f"window with `start: trigger` (window {cfg.index_timestamp_window!r} has start {iw.start!r})")
    lw = cfg.windows[cfg.label_window]
    if not (lw.start == "trigger" and not lw.start_inclusive):
        raise TaskError(f"{task.path}: the label window {cfg.label_window!r} must start at the trigger and exclude it "
                        "(start: trigger, start_inclusive: false): the model sees every event at or before the "
                        "prediction time, so a label event at that time would be in its input")


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------

def _shard_files(meds_root) -> list[Path]:
    from medscale.data.meds import read_meds  # noqa: PLC0415

    return [s.path for s in read_meds(meds_root).shards]


def _aces_rows(task: Task, shards: list[Path]) -> pl.DataFrame:
    """ACES's output over every shard: subject_id, prediction_time, aces_label, window_start, window_end."""
    from aces import predicates as aces_predicates, query as aces_query  # noqa: PLC0415
    from omegaconf import DictConfig  # noqa: PLC0415

    cfg = task.aces_config()
    lw = cfg.windows[cfg.label_window]
    summary = f"{cfg.label_window}.{'end' if lw.root_node == 'start' else 'start'}_summary"
    frames = []
    with _quiet_aces():
        for shard in shards:
            preds = aces_predicates.get_predicates_df(cfg, DictConfig({"path": str(shard), "standard": "meds"}))
            out = aces_query.query(cfg, preds)
            if out.is_empty():
                continue
            frames.append(out.select(
                pl.col("subject_id").cast(pl.Int64),
                pl.col("index_timestamp").cast(pl.Datetime("us")).alias("prediction_time"),
                pl.col("label").cast(pl.Int64).alias("aces_label"),
                pl.col(summary).struct.field("timestamp_at_start").cast(pl.Datetime("us")).alias("window_start"),
                pl.col(summary).struct.field("timestamp_at_end").cast(pl.Datetime("us")).alias("window_end")))
    schema = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "aces_label": pl.Int64,
              "window_start": pl.Datetime("us"), "window_end": pl.Datetime("us")}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _window_sums(rows: pl.DataFrame, task: Task, shards: list[Path]) -> np.ndarray:
    """Sum of the label predicate's numeric_value over each row's label window (ACES's bounds)."""
    cfg = task.aces_config()
    lw = cfg.windows[cfg.label_window]
    expr = cfg.predicates[lw.label].MEDS_eval_expr()
    events = (pl.scan_parquet([str(s) for s in shards])
              .select(pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")),
                      pl.col("code").cast(pl.Utf8), pl.col("numeric_value").cast(pl.Float64))
              .filter(pl.col("time").is_not_null()).filter(expr).collect()
              .group_by(["subject_id", "time"]).agg(pl.col("numeric_value").fill_null(0.0).sum())
              .sort(["subject_id", "time"])
              .with_columns(pl.col("numeric_value").cum_sum().over("subject_id").alias("_cum")))

    def cum_at(col: str, inclusive: bool) -> np.ndarray:
        left = rows.select("_row", "subject_id", pl.col(col).alias("_at")).sort("_at")
        right = events.select("subject_id", pl.col("time").alias("_at"), "_cum").sort("_at")
        joined = left.join_asof(right, on="_at", by="subject_id", strategy="backward",
                                allow_exact_matches=inclusive, check_sortedness=False).sort("_row")
        return joined["_cum"].fill_null(0.0).to_numpy()

    return cum_at("window_end", bool(lw.end_inclusive)) - cum_at("window_start", not lw.start_inclusive)


def _ground_truth(meds_root, task: Task) -> pl.DataFrame:
    from medscale.data.simulator.ground_truth import read_ground_truth  # noqa: PLC0415

    truth = read_ground_truth(meds_root, outcome=task.ground_truth)
    if task.target_code is not None:
        truth = truth[truth["target_code"] == task.target_code]
    truth = truth.drop_duplicates(["subject_id", "prediction_time"])
    return pl.from_pandas(truth[["subject_id", "prediction_time", "value"]]).select(
        pl.col("subject_id").cast(pl.Int64), pl.col("prediction_time").cast(pl.Datetime("us")),
        pl.col("value").cast(pl.Float64).alias("truth"))


def extract_labels(meds_root, task: Task | str, *, use_ground_truth: bool = True) -> pd.DataFrame:
    """The task's MEDS label table over a MEDS dataset, one row per (subject_id, prediction_time).

    Columns: subject_id, prediction_time, boolean_value (bool, binary tasks; None otherwise), float_value
    (regression; NaN otherwise), split, truth (NaN without ground truth). Sorted by subject and time.
    """
    from medscale.data.meds import read_meds  # noqa: PLC0415

    task = load_task(task) if isinstance(task, str) else task
    if task.parts:
        frames = [extract_labels(meds_root, p, use_ground_truth=use_ground_truth) for p in task.parts]
        both = pd.concat(frames, ignore_index=True).drop_duplicates(["subject_id", "prediction_time"])
        return both.sort_values(["subject_id", "prediction_time"], kind="stable").reset_index(drop=True)
    shards = _shard_files(meds_root)
    rows = _aces_rows(task, shards).unique(["subject_id", "prediction_time"], keep="first", maintain_order=True)
    rows = rows.with_row_index("_row")
    if task.value == "sum":
        rows = rows.with_columns(pl.Series("float_value", _window_sums(rows, task, shards)),
                                 pl.lit(None, dtype=pl.Boolean).alias("boolean_value"))
    else:
        label = pl.col("aces_label") > 0
        rows = rows.with_columns((~label if task.negate else label).alias("boolean_value"),
                                 pl.lit(float("nan")).alias("float_value"))
    has_truth = use_ground_truth and task.ground_truth is not None and (Path(meds_root) / "ground_truth").is_dir()
    if has_truth:
        rows = rows.join(_ground_truth(meds_root, task), on=["subject_id", "prediction_time"], how="inner")
    else:
        rows = rows.with_columns(pl.lit(float("nan")).alias("truth"))
    out = rows.select("subject_id", "prediction_time", "boolean_value", "float_value", "truth").to_pandas()
    out["prediction_time"] = out["prediction_time"].astype("datetime64[us]")
    dataset = read_meds(meds_root)
    out["split"] = dataset.split_of(out["subject_id"].to_numpy()) if len(out) else []
    out = out[["subject_id", "prediction_time", "boolean_value", "float_value", "split", "truth"]]
    return out.sort_values(["subject_id", "prediction_time"], kind="stable").reset_index(drop=True)


def label_values(labels: pd.DataFrame, task: Task) -> np.ndarray:
    """float64 targets of a label table: 0/1 for binary tasks, the value for regression."""
    if task.kind == "regression":
        return labels["float_value"].to_numpy(dtype=np.float64)
    return labels["boolean_value"].to_numpy().astype(np.float64)


def window_horizon(task: Task) -> timedelta | None:
    rule = task.label_rule()
    return None if rule.horizon_s is None else timedelta(seconds=rule.horizon_s)
