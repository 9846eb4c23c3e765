"""medscale's MEDS-DEV model entry (meds_dev/medscale/) run the way MEDS-DEV runs it.

MEDS-DEV (src/MEDS_DEV/models/__init__.py: model_commands, fmt_command; utils.py: run_in_env) reads the
entry's model.yaml, fills each command with str.format, writes it to `<output_dir>/cmd.sh` after
`#!/bin/bash` and `set -e`, and runs `bash cmd.sh` with the entry's virtual environment first on PATH. Its
own test flow (tests/conftest.py there) is: unsupervised train with demo=True into one folder, then
mode=full on the supervised side: train into `<out>/<dataset>/<task>/train` with model_initialization_dir =
the unsupervised folder, predict into `.../predict` with split=held_out and model_initialization_dir = the
train folder; meds-evaluation then reads `predict/**/*.parquet`. This test repeats that flow on
meds-testing-helpers' sample dataset and its label folder, with this checkout's .venv as the entry's venv.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "meds_dev" / "medscale"
TASK = "boolean_value_task"


def fmt_command(commands: dict, dataset_type: str, run_mode: str, **kwargs) -> str:
    """MEDS-DEV's fmt_command: the command string filled with str.format (extra keys ignored)."""
    return commands[dataset_type][run_mode].format(**kwargs)


def run_like_meds_dev(cmd: str, output_dir: Path) -> subprocess.CompletedProcess:
    """MEDS-DEV's run_in_env: cmd.sh in the output folder, run by bash with the venv's bin first on PATH."""
    output_dir.mkdir(parents=True, exist_ok=True)
    script = output_dir / "cmd.sh"
    script.write_text("\n".join(["#!/bin/bash", "set -e", cmd]))
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.prefix)),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}\nSTDOUT:\n{done.stdout}\nSTDERR:\n{done.stderr}"
    (output_dir / ".done").touch()
    return done


@pytest.fixture(scope="module")
def entry() -> dict:
    return yaml.safe_load((ENTRY / "model.yaml").read_text())


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS

    root = tmp_path_factory.mktemp("meds_dev") / "meds"
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(root)
    return root


def test_entry_has_what_meds_dev_loads(entry):
    """The files MEDS-DEV's model loader reads, with the metadata fields its Metadata class requires."""
    assert set(entry) == {"metadata", "commands"}
    meta = entry["metadata"]
    assert isinstance(meta["description"], str) and meta["description"].strip()
    assert meta["contacts"] and all(isinstance(c["name"], str) for c in meta["contacts"])
    assert all(link.startswith("https://") for link in meta.get("links") or [])
    assert set(entry["commands"]) == {"unsupervised", "supervised"}
    assert set(entry["commands"]["supervised"]) == {"train", "predict"}
    assert (ENTRY / "requirements.txt").read_text().count("medscale") >= 1
    readme = (ENTRY / "README.md").read_text()
    for heading in ("## Description", "## Computational Requirements", "## Dependencies", "## Running the model",
                    "## Checklist"):
        assert heading in readme


def test_full_size_spec_is_a_valid_one_run_spec(sample):
    """demo=False pretrains spec.yaml on MEDS-DEV's dataset: it must validate as a one-point medscale spec."""
    from medscale.scaling.meds_dev import parse_flag, pretrain_spec
    from medscale.scaling.sweep.spec import grid_size, parse_spec

    spec = parse_spec(pretrain_spec(ENTRY / "spec.yaml", sample, demo=False), source="spec.yaml")
    assert grid_size(spec) == 1 and spec.dataset.meds == str(sample.resolve())
    assert spec.dataset.tokenizer.min_count == 10   # the spec's tokenizer survives the dataset swap
    assert parse_flag(str(True)) is True and parse_flag(str(False)) is False   # how str.format renders {demo}


@pytest.mark.slow
def test_entry_runs_end_to_end_as_meds_dev_templates_it(entry, sample, tmp_path):
    from meds_evaluation.evaluate import evaluate_binary_classification
    from meds_evaluation.schema import PredictionSchema

    commands, labels = entry["commands"], sample / "task_labels" / TASK
    base = {"dataset_dir": str(sample), "model_dir": str(ENTRY), "demo": True}
    unsup = tmp_path / "unsup"
    cmd = fmt_command(commands, "unsupervised", "train", **base, output_dir=str(unsup))
    assert "--demo True" in cmd and "{" not in cmd
    run_like_meds_dev(cmd, unsup)

    run_root, init = tmp_path / "models" / "sample" / TASK, str(unsup)
    for run_mode in ("train", "predict"):
        out = run_root / run_mode
        extra = {"split": "held_out"} if run_mode == "predict" else {}
        cmd = fmt_command(commands, "supervised", run_mode, **base, **extra, labels_dir=str(labels),
                          output_dir=str(out), model_initialization_dir=init)
        assert "{" not in cmd
        run_like_meds_dev(cmd, out)
        init = str(out)

    files = sorted((run_root / "predict").rglob("*.parquet"))   # meds-evaluation's predictions_path glob
    assert [f.name for f in files] == ["predictions.parquet"]
    preds = pl.read_parquet(files[0])
    PredictionSchema.validate(preds.to_arrow())
    held = set(pl.read_parquet(sample / "metadata" / "subject_splits.parquet")
               .filter(pl.col("split") == "held_out")["subject_id"].to_list())
    labels_all = pl.read_parquet(sorted(labels.glob("*.parquet"))).unique(["subject_id", "prediction_time"])
    assert preds.height == labels_all.filter(pl.col("subject_id").is_in(held)).height
    assert set(preds["subject_id"].to_list()) <= held
    p = preds["predicted_boolean_probability"].to_numpy()
    assert np.all((p >= 0) & (p <= 1)) and np.array_equal(preds["predicted_boolean_value"].to_numpy(), p >= 0.5)
    result = evaluate_binary_classification(preds)["samples_equally_weighted"]
    assert 0.0 <= result["roc_auc_score"] <= 1.0 and 0.0 <= result["brier_score"] <= 1.0


# ----- the predictions report: per-task bootstrap intervals, paired across models -------------------------

def _predictions(path: Path, y: np.ndarray, score: np.ndarray, subjects: np.ndarray) -> Path:
    import pandas as pd

    times = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(y.size) % 2, unit="D")
    pl.DataFrame({"subject_id": subjects, "prediction_time": times.to_numpy().astype("datetime64[us]"),
                  "boolean_value": y.astype(bool), "predicted_boolean_value": score >= 0.5,
                  "predicted_boolean_probability": score.astype(np.float32)}).write_parquet(path)
    return path


@pytest.fixture
def two_models(tmp_path):
    """120 rows of 60 subjects; `better` sees the label through less noise than `worse` (shared noise too)."""
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(60), 2)
    y = (rng.uniform(size=120) < 0.4).astype(float)
    shared = rng.normal(size=120)
    better = 1 / (1 + np.exp(-(2.5 * y + shared + 0.5 * rng.normal(size=120) - 1)))
    worse = 1 / (1 + np.exp(-(1.0 * y + shared + 0.5 * rng.normal(size=120) - 0.5)))
    (tmp_path / "b").mkdir()
    return (y, subjects, better, worse, _predictions(tmp_path / "worse.parquet", y, worse, subjects),
            _predictions(tmp_path / "b" / "0.parquet", y, better, subjects))


def test_predictions_report_gives_subject_bootstrap_intervals_paired_across_models(two_models):
    from medscale.analysis.metrics import evaluate
    from medscale.scaling.predictions_report import parse_sources, predictions_report

    y, subjects, better, worse, worse_file, better_dir = two_models
    table = predictions_report(parse_sources([f"t/worse={worse_file}", f"t/better={better_dir.parent}"]),
                               n_boot=300, seed=0)
    assert len(table) == 6 and set(table["n"]) == {120} and set(table["subjects"]) == {60}
    own = evaluate(y, better.astype(np.float32), subjects, metrics=("auroc",), n_boot=300, seed=0)["auroc"]
    row = table[(table["model"] == "better") & (table["metric"] == "auroc")].iloc[0]
    assert (row["value"], row["low"], row["high"]) == pytest.approx(own)    # medscale's own subject bootstrap
    assert row["low"] < row["value"] < row["high"]
    assert row["difference"] > 0 and row["difference_low"] > 0 and row["p_better"] > 0.95
    worse_row = table[(table["model"] == "worse") & (table["metric"] == "auroc")].iloc[0]
    unpaired = np.hypot(row["high"] - row["low"], worse_row["high"] - worse_row["low"])
    assert row["difference_high"] - row["difference_low"] < unpaired   # pairing removes the shared noise
    brier = table[(table["model"] == "better") & (table["metric"] == "brier")].iloc[0]
    assert brier["difference"] < 0 and brier["p_better"] > 0.95        # lower Brier is better


def test_predictions_report_refuses_models_scored_on_different_labels(two_models, tmp_path):
    from medscale.scaling.errors import UserError
    from medscale.scaling.predictions_report import parse_sources, predictions_report

    y, subjects, better, _, worse_file, _ = two_models
    flipped = _predictions(tmp_path / "flipped.parquet", 1 - y, better, subjects)
    with pytest.raises(UserError, match="labels that differ"):
        predictions_report(parse_sources([f"a={worse_file}", f"b={flipped}"]), n_boot=10)
    with pytest.raises(UserError, match="TASK/MODEL=PATH"):
        parse_sources(["no-equals-sign"])


def test_predictions_report_command_writes_the_table(two_models, tmp_path):
    from typer.testing import CliRunner

    from medscale.scaling.cli import app

    *_, worse_file, better_dir = two_models
    out = tmp_path / "report.csv"
    got = CliRunner().invoke(app, ["predictions-report", f"t/worse={worse_file}", f"t/better={better_dir}",
                                   "--n-boot", "50", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "vs worse" in got.output
    table = pl.read_csv(out)
    assert table.height == 6 and table.filter(pl.col("model") == "better")["p_better"].null_count() == 0
