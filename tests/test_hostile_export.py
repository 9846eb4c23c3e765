"""Hostile use of `medscale export` (issue 33): the output folder follows the README's output rules (absent,
empty, or an earlier export: never a folder of the user's files), and an export says which step it holds and
whether the run finished; a run that did not finish is refused unless --partial, which records it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_spec


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    """One tiny decoder run trained to its end (60 steps, a checkpoint every 10)."""
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.sweep.store import RunStore
    from medscale.scaling.run.train import execute_run

    meds, tokens = tiny_dataset
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    store = RunStore(tmp_path_factory.mktemp("export_store"))
    (config,) = expand(parse_spec(tiny_spec(meds)), token_dir=str(tokens), vocab_size=vocab, dataset_id="tiny")
    run = store.ensure(config)
    assert execute_run(run, devices=1) == "done"
    return run


@pytest.fixture
def killed_run(finished_run, tmp_path):
    """The same run as a kill -9 at step 55 leaves it: state running, no metrics, latest checkpoint 50."""
    from medscale.scaling.sweep.store import RunDir

    path = tmp_path / "store" / "runs" / finished_run.path.name
    shutil.copytree(finished_run.path, path)
    steps = sorted(int(p.name) for p in (path / "ckpt").iterdir() if p.name.isdigit())
    shutil.rmtree(path / "ckpt" / str(steps[-1]))
    (path / "metrics.json").unlink()
    run = RunDir(path)
    run.set_status("running", attempts=2)
    return run, steps[-2], steps[-1]


def _export(*args) -> tuple[int, str]:
    from medscale.scaling.cli import app

    result = CliRunner().invoke(app, ["export", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def test_export_never_overwrites_a_users_file(finished_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my own weights, trained elsewhere")
    (mine / "notes.txt").write_text("keep me")
    code, text = _export(finished_run.path, "--out", mine)
    assert code == 2, text
    assert f"--out {mine} is not empty" in text and "model.safetensors" in text and "new or empty folder" in text
    assert (mine / "model.safetensors").read_bytes() == b"my own weights, trained elsewhere"
    assert sorted(p.name for p in mine.iterdir()) == ["model.safetensors", "notes.txt"]  # nothing added


def test_export_refuses_another_medscale_folder_and_a_file(finished_run, tiny_dataset, tmp_path):
    _, tokens = tiny_dataset
    before = sorted(p.name for p in tokens.iterdir())
    code, text = _export(finished_run.path, "--out", tokens)
    assert code == 2 and "medscale tokens folder" in text, text
    assert sorted(p.name for p in tokens.iterdir()) == before
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"x")
    code, text = _export(finished_run.path, "--out", target)
    assert code == 2 and "is a file" in text and target.read_bytes() == b"x", text


def test_a_finished_export_records_its_step_and_can_be_redone_in_place(finished_run, tmp_path):
    from medscale.scaling.run.export import read_safetensors

    out = tmp_path / "export"
    for _ in range(2):   # the second run writes over medscale's own export (marked), as a rerun should
        code, text = _export(finished_run.path, "--out", out)
        assert code == 0 and "(step 60 of 60, finished)" in text, text
    config = json.loads((out / "config.json").read_text())
    assert config["training"] == {"step": 60, "steps": 60, "state": "done", "finished": True}
    assert json.loads((out / ".medscale-store.json").read_text())["kind"] == "export"
    _, meta = read_safetensors(out / "model.safetensors")
    assert meta["step"] == "60" and meta["finished"] == "true"


def test_a_killed_run_is_refused_unless_partial_and_then_says_so(killed_run, tmp_path):
    from medscale.scaling.run.export import read_safetensors

    run, step, last = killed_run
    out = tmp_path / "export"
    code, text = _export(run.path, "--out", out)
    assert code == 2, text
    assert f"run {run.run_id} did not finish (state running; its latest checkpoint is step {step} of {last})" in text
    assert "--partial" in text and "rerun" in text
    assert not out.exists()   # refused before anything was written

    code, text = _export(run.path, "--out", out, "--partial")
    assert code == 0, text
    assert "warning:" in text and f"partial weights of step {step}" in text
    assert f"(step {step} of {last}, partial)" in text
    config = json.loads((out / "config.json").read_text())
    assert config["training"] == {"step": step, "steps": last, "state": "running", "finished": False}
    _, meta = read_safetensors(out / "model.safetensors")
    assert meta["step"] == str(step) and meta["finished"] == "false"
