"""`medscale meds-dev`: the three commands a MEDS-DEV model entry runs (meds_dev/medscale/model.yaml).

MEDS-DEV (github.com/Medical-Event-Data-Standard/MEDS-DEV) fills each command of the entry's model.yaml with
Python's str.format ({dataset_dir}, {labels_dir}, {output_dir}, {model_initialization_dir}, {split}, {demo},
{model_dir}) and runs it with bash in a fresh virtual environment; `{output_dir}` of one stage is the next
stage's `{model_initialization_dir}`:

    pretrain   unsupervised train: tokenize the MEDS dataset and pretrain the model a spec names (the entry's
               spec.yaml, or one `medscale optimal --spec-out` wrote); `--demo True` swaps in a tiny model
               that trains in seconds on a CPU. OUT/store is the run store, OUT/model.json names the run.
    fit        supervised train: the linear probe (scaling/downstream/baselines.probe_head) on the pretrained
               model's frozen representation of each labelled history of the train and tuning splits, for the
               one task of {labels_dir} (MEDS label schema). OUT/head.npz, OUT/model.json.
    predict    predictions for {split} in meds-evaluation's schema: OUT/predictions.parquet.

Histories are cut at each prediction time exactly as `medscale downstream` cuts them (data/history.py).
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
import typer
import yaml

from medscale.atomic import write_json, write_with, write_yaml
from medscale.data.labels import read_label_task
from medscale.data.meds import read_meds
from medscale.scaling.downstream.baselines import probe_head
from medscale.scaling.downstream.predictions import predictions_table
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import RunDir

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="The commands of medscale's MEDS-DEV model entry (meds_dev/medscale/model.yaml).")

# `--demo True`: a model small enough to train in seconds on a CPU, on any MEDS dataset (even 6 subjects)
DEMO = {"model": {"seq_len": 8},
        "grid": {"mode": "ladder", "params": [{"d_model": 16, "n_layers": 1, "n_heads": 1}], "tokens": [1024]},
        "optimizer": {"batch_size": 8, "lr": 3.0e-3},
        "resources": {"cpus": 1, "host_devices": 1},
        "eval": {"n_evals": 2, "batches": 1, "split": "tuning"},
        "seeds": [0]}
DEMO_TOKENIZER = {"min_count": 1, "value_bins": 4}
FIT_SPLITS = ("train", "tuning")


def with_cli_errors(fn):
    """The CLI's error handling (scaling/cli.user_errors), imported when the command runs (cli imports us)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from medscale.scaling.cli import user_errors

        return user_errors(fn)(*args, **kwargs)
    return wrapper


def parse_flag(text: str) -> bool:
    """MEDS-DEV formats its `demo` flag with str.format: 'True'/'False' (also true/false/1/0/yes/no)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", "none", ""):
        return False
    raise UserError(f"--demo {text!r}: give True or False")


def _say(message: str) -> None:
    from medscale.scaling.cli import out

    out.print(message, markup=False, highlight=False, soft_wrap=True)


# ----- pretrain ----------------------------------------------------------------------------------------

def pretrain_spec(spec_file: Optional[Path], dataset: Path, demo: bool) -> dict:
    """The one-run spec to pretrain: `spec_file` (or the demo) with its dataset set to `dataset`."""
    spec = yaml.safe_load(spec_file.read_text()) if spec_file else {}
    if not isinstance(spec, dict):
        raise UserError(f"{spec_file}: a sweep spec (YAML mapping) is expected")
    tokenizer = (spec.get("dataset") or {}).get("tokenizer") or {}
    if demo:
        spec = {**spec, **DEMO}
        tokenizer = {**tokenizer, **DEMO_TOKENIZER}
    elif spec_file is None:
        raise UserError("give --spec FILE (the entry's spec.yaml or `medscale optimal --spec-out`), or --demo True")
    spec.setdefault("objective", "decoder")
    spec["name"] = spec.get("name") or "meds-dev"
    spec["dataset"] = {"meds": str(dataset.resolve()), "tokenizer": tokenizer}
    spec.pop("downstream", None)
    return spec


@app.command()
@with_cli_errors
def pretrain(
    dataset: Path = typer.Option(..., "--dataset", help="MEDS root ({dataset_dir}: data/, metadata/)."),
    out_dir: Path = typer.Option(..., "--out", help="Stage folder ({output_dir}): store/ and model.json go here."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="Sweep spec with one grid point; its dataset is replaced by --dataset."),
    demo: str = typer.Option("False", "--demo", help="True: a tiny model that trains in seconds on a CPU ({demo})."),
) -> None:
    """Unsupervised train: tokenize the dataset and pretrain one model on it."""
    from medscale.scaling.pipeline import train_one

    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.yaml"
    write_yaml(spec_path, pretrain_spec(spec_file, dataset, parse_flag(demo)))
    run, state = train_one(spec_path, out_dir / "store", log=_say)
    if state != "done":
        raise UserError(f"run {run.run_id} ended {state!r}; see {run.path}/status.jsonl")
    write_json(out_dir / "model.json", {"run_dir": str(run.path.resolve()), "run_id": run.run_id,
                                        "dataset": str(dataset.resolve())})
    _say(f"pretrained {run.run_id}: loss {(run.metrics() or {}).get('loss')}; {out_dir / 'model.json'}")


# ----- fit and predict ---------------------------------------------------------------------------------

def _stage(init: Path) -> dict:
    path = Path(init) / "model.json"
    if not path.exists():
        raise UserError(f"{path}: not found; --init must be the output folder of the previous stage "
                        "(medscale meds-dev pretrain, then fit)")
    return json.loads(path.read_text())


def task_labels(labels: Path, dataset: Path):
    """(task, label frame) of the one task in a MEDS-DEV labels folder ({labels_dir}: the task's parquet files,
    at any depth), read and validated by data/labels.py as a one-task label folder."""
    labels = labels.resolve()
    if not labels.is_dir():
        raise UserError(f"{labels}: no such labels folder")
    with tempfile.TemporaryDirectory(prefix="medscale-labels-") as root:
        (Path(root) / labels.name).symlink_to(labels, target_is_directory=True)
        return labels.name, *read_label_task(root, labels.name, read_meds(dataset))


def representations(run_dir: str, dataset: str, rows):
    """The pooled representation [N, D] of each label row's history (cut at its prediction time)."""
    from medscale.data.history import build_histories
    from medscale.data.tokenizer import Tokenizer
    from medscale.scaling.downstream.model import embed, load_run_model

    model = load_run_model(RunDir(run_dir))
    tokenizer = Tokenizer.load(model.token_dir)
    hist = build_histories(dataset, rows, tokenizer, model.cfg.max_len)
    return embed(model, hist.tokens_NxL, hist.lengths_N)


@app.command()
@with_cli_errors
def fit(
    init: Path = typer.Option(..., "--init", help="The pretrain stage's folder ({model_initialization_dir})."),
    labels: Path = typer.Option(..., "--labels", help="One task's labels in the MEDS label schema ({labels_dir})."),
    dataset: Path = typer.Option(..., "--dataset", help="MEDS root ({dataset_dir})."),
    out_dir: Path = typer.Option(..., "--out", help="Stage folder ({output_dir}): head.npz and model.json."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe's cross-validation."),
) -> None:
    """Supervised train: a linear probe on the pretrained model's representations of the train and tuning
    splits' labelled histories."""
    stage = _stage(init)
    task, rows, kind = task_labels(labels, dataset)
    rows = rows[rows["split"].isin(FIT_SPLITS)].reset_index(drop=True)
    y = rows["boolean_value"].to_numpy(float) if kind == "binary" else rows["float_value"].to_numpy(float)
    if rows.empty or (kind == "binary" and np.unique(y).size < 2):
        raise UserError(f"{labels}: the {' and '.join(FIT_SPLITS)} splits need labels of both classes to fit on")
    w, b = probe_head(representations(stage["run_dir"], str(dataset.resolve()), rows), y, kind, seed)
    mu, sd = (0.0, 1.0) if kind == "binary" else (float(y.mean()), float(y.std() or 1.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "head.npz", w=w, b=np.float64(b), mu=mu, sd=sd)
    write_json(out_dir / "model.json", {**stage, "task": task, "kind": kind, "mode": "probe", "n_fit": len(rows)})
    _say(f"fitted a probe for {task} ({kind}) on {len(rows)} labelled histories; {out_dir / 'head.npz'}")


def head_scores(Z, head_file: Path, kind: str) -> np.ndarray:
    head = np.load(head_file)
    raw = np.asarray(Z, np.float64) @ head["w"].astype(np.float64) + float(head["b"])
    return 1.0 / (1.0 + np.exp(-raw)) if kind == "binary" else raw * float(head["sd"]) + float(head["mu"])


@app.command()
@with_cli_errors
def predict(
    init: Path = typer.Option(..., "--init", help="The fit stage's folder ({model_initialization_dir})."),
    labels: Path = typer.Option(..., "--labels", help="The task's labels ({labels_dir}); the rows of --split are predicted."),
    dataset: Path = typer.Option(..., "--dataset", help="MEDS root ({dataset_dir})."),
    split: str = typer.Option("held_out", "--split", help="Which split's label rows to predict ({split})."),
    out_dir: Path = typer.Option(..., "--out", help="Stage folder ({output_dir}): predictions.parquet."),
) -> None:
    """Predict: the task's label rows of --split, scored, in meds-evaluation's schema."""
    stage = _stage(init)
    if "task" not in stage:
        raise UserError(f"{init}: holds no fitted head; --init must be the fit stage's folder")
    _, rows, kind = task_labels(labels, dataset)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise UserError(f"{labels}: no label rows for subjects of split {split!r}")
    score = head_scores(representations(stage["run_dir"], str(dataset.resolve()), rows), init / "head.npz", kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = predictions_table(rows, score, kind)
    write_with(out_dir / "predictions.parquet", lambda p: pq.write_table(table, p))
    _say(f"{len(rows)} predictions for {stage['task']} ({split}): {out_dir / 'predictions.parquet'}")
