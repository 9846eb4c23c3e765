"""Output that tells the truth (issue 33): a command refused while its input is checked draws no progress bar
first; a bar ends full; nothing is drawn when the output is not a terminal, and a pipe gets each line whole
(piped `medscale fit` itself: tests/test_one_number.py)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import tiny_spec

BAR = "━"


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """The CLI's stderr console as an 80-column terminal writing into a buffer."""
    from medscale.scaling import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buffer, force_terminal=True, width=80))
    return buffer


def _invoke(*args) -> int:
    from medscale.scaling.cli import app

    return CliRunner().invoke(app, [str(a) for a in args]).exit_code


def test_a_refused_generate_draws_no_bar_before_its_error(terminal, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    assert _invoke("generate", "--subjects", 50, "--out", tmp_path, "--workers", 1) == 2
    text = terminal.getvalue()
    assert "is not empty" in text
    assert BAR not in text and "0/50" not in text, text   # was: a "0/50" bar, then the error


def test_generate_in_a_terminal_ends_with_a_full_bar(terminal, tmp_path):
    assert _invoke("generate", "--subjects", 12, "--out", tmp_path / "meds", "--workers", 1) == 0
    text = terminal.getvalue()
    assert BAR in text and "12/12" in text.split("simulating patients")[-1], text


def test_piped_refusal_is_one_whole_line_with_no_bar(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    env = {**os.environ, "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "generate", "--subjects", "50", "--out",
                             str(tmp_path), "--workers", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80 and lines[0].endswith("never writes over existing files."), lines
    assert BAR not in result.stdout + result.stderr


def test_downstream_progress_ends_full_on_each_counter(tiny_dataset, tmp_path):
    """Each stage evaluate_store reports ends at its total (was: 'labels 0/2', and a new bar per run time)."""
    from medscale.scaling.downstream import load_downstream_spec
    from medscale.scaling.downstream.evaluate import evaluate_store
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.sweep.store import RunStore
    from medscale.scaling.run.train import execute_run

    meds, tokens = tiny_dataset
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    store = RunStore(tmp_path / "store")
    (config,) = expand(parse_spec(tiny_spec(meds)), token_dir=str(tokens), vocab_size=vocab, dataset_id="tiny")
    assert execute_run(store.ensure(config), devices=1) == "done"
    calls: list[tuple[str, int, int]] = []
    spec = load_downstream_spec({"tasks": ["med_start_30d"], "modes": ["probe", "lightgbm"], "n_boot": 10,
                                 "max_samples": 100})
    evaluate_store(store.root, spec, progress=lambda stage, done, total: calls.append((stage, done, total)))
    last = {stage: (done, total) for stage, done, total in calls}
    assert last == {"downstream: labels and baselines": (1, 1), "downstream: runs": (1, 1)}, calls
    assert all(0 <= done <= total for _, done, total in calls)
