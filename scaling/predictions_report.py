"""`medscale predictions-report`: bootstrap intervals for prediction files in meds-evaluation's schema, per
task, paired across models (meds-evaluation itself gives point metrics only).

    medscale predictions-report mortality/medscale=out/medscale/predict mortality/meds_tab=out/tab/predict

Each argument is TASK/MODEL=PATH (or MODEL=PATH for one task): a predictions parquet file, or a folder whose
parquet files (any depth, e.g. a MEDS-DEV predict folder) are read together. Within a task every model is
scored on the label rows all of them predicted (subject_id, prediction_time), with one set of subject-level
bootstrap resamples (analysis/metrics.evaluate_paired): each model's AUROC, AUPRC and Brier score get a
percentile interval, and each model's difference from the task's first model (the reference) a paired
interval and p_better, the share of resamples in which it is better (analysis/paired.paired_differences).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer

from medscale.analysis.metrics import evaluate_paired
from medscale.analysis.paired import paired_differences
from medscale.scaling.errors import UserError
from medscale.scaling.meds_dev import _say, with_cli_errors

METRICS = ("auroc", "auprc", "brier")
KEY = ["subject_id", "prediction_time"]
COLUMNS = ["task", "model", "metric", "value", "low", "high", "n", "subjects", "reference", "difference",
           "difference_low", "difference_high", "p_better"]


def parse_sources(items: list[str]) -> dict[str, dict[str, Path]]:
    """task -> {model: path} from TASK/MODEL=PATH (or MODEL=PATH) arguments, in the order given."""
    out: dict[str, dict[str, Path]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{item!r}: give TASK/MODEL=PATH (or MODEL=PATH), e.g. mortality/medscale=out/predict")
        task, _, model = name.rpartition("/")
        if model in out.setdefault(task or "task", {}):
            raise UserError(f"{item!r}: model {model!r} is given twice for task {task or 'task'!r}")
        out[task or "task"][model] = Path(path)
    return out


def read_predictions(path: Path) -> pd.DataFrame:
    """subject_id, prediction_time, boolean_value, predicted_boolean_probability of a file or a folder."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise UserError(f"{path}: no predictions parquet files")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    missing = {"boolean_value", "predicted_boolean_probability", *KEY} - set(frame.columns)
    if missing:
        raise UserError(f"{path}: column(s) {', '.join(sorted(missing))} missing; meds-evaluation's binary schema "
                        "has subject_id, prediction_time, boolean_value, predicted_boolean_probability")
    frame["prediction_time"] = frame["prediction_time"].astype("datetime64[us]")
    return frame[KEY + ["boolean_value", "predicted_boolean_probability"]].drop_duplicates(KEY)


def aligned(models: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(the label rows every model predicted, {model: its scores on them}); labels must agree."""
    names = list(models)
    rows = models[names[0]][KEY + ["boolean_value"]]
    for name in names[1:]:
        rows = rows.merge(models[name][KEY + ["boolean_value"]], on=KEY, suffixes=("", "_other"))
        if (rows["boolean_value"] != rows.pop("boolean_value_other")).any():
            raise UserError(f"model {name!r} has labels that differ from {names[0]!r} on the same rows; "
                            "compare predictions of one label set")
    if rows.empty:
        raise UserError(f"models {', '.join(names)} share no (subject_id, prediction_time) rows")
    rows = rows.sort_values(KEY).reset_index(drop=True)
    scores = {n: rows[KEY].merge(m, on=KEY, how="left")["predicted_boolean_probability"].to_numpy(float)
              for n, m in models.items()}
    return rows, scores


def task_report(task: str, models: dict[str, pd.DataFrame], *, n_boot: int, seed: int, level: float) -> list[dict]:
    rows, scores = aligned(models)
    y, subjects = rows["boolean_value"].to_numpy(float), rows["subject_id"].to_numpy()
    res, draws = evaluate_paired(y, scores, subjects, metrics=METRICS, n_boot=n_boot, seed=seed, level=level)
    ref = next(iter(models))
    out = []
    for model in models:
        for metric in METRICS:
            value, low, high = res[model][metric]
            row = dict(task=task, model=model, metric=metric, value=value, low=low, high=high, n=len(rows),
                       subjects=int(np.unique(subjects).size), reference=ref)
            if model != ref and n_boot:
                matrix = np.column_stack([draws[ref][metric], draws[model][metric]])
                diff = paired_differences([ref, model], [res[ref][metric][0], value], matrix, level=level,
                                          higher_is_better=metric != "brier").iloc[0]
                row.update(difference=diff["difference"], difference_low=diff["low"], difference_high=diff["high"],
                           p_better=diff["p_better"])
            out.append(row)
    return out


def predictions_report(sources: dict[str, dict[str, Path]], *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> pd.DataFrame:
    """The report table (COLUMNS): one row per task, model and metric."""
    rows = []
    for task, paths in sources.items():
        models = {model: read_predictions(path) for model, path in paths.items()}
        rows += task_report(task, models, n_boot=n_boot, seed=seed, level=level)
    return pd.DataFrame(rows, columns=COLUMNS)


def report_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for (task, metric), part in table.groupby(["task", "metric"], sort=False):
        lines.append(f"{task} {metric} (n={part['n'].iloc[0]}, {part['subjects'].iloc[0]} subjects):")
        for _, r in part.iterrows():
            text = f"  {r['model']}: {r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"
            if pd.notna(r["difference"]):
                text += (f"  vs {r['reference']}: {r['difference']:+.4f} [{r['difference_low']:+.4f}, "
                         f"{r['difference_high']:+.4f}], better in {r['p_better']:.0%} of resamples")
            lines.append(text)
    return lines


@with_cli_errors
def predictions_report_command(
    sources: list[str] = typer.Argument(..., help="TASK/MODEL=PATH (or MODEL=PATH): a predictions parquet file or a folder of them."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write the table here (.csv or .json)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Subject-level bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resamples (shared by every model of a task)."),
    level: float = typer.Option(0.95, "--level", min=0.5, max=0.999, help="Interval level."),
) -> None:
    """Per-task metrics of prediction files with subject-level bootstrap intervals, paired across models."""
    table = predictions_report(parse_sources(sources), n_boot=n_boot, seed=seed, level=level)
    for line in report_lines(table):
        _say(line)
    if out_file is not None:
        from medscale.atomic import write_with

        write = (lambda p: table.to_json(p, orient="records", indent=1)) if out_file.suffix == ".json" \
            else (lambda p: table.to_csv(p, index=False))
        write_with(out_file, write)
        _say(f"report: {out_file}")
