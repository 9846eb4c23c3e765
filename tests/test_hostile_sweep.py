"""Hostile sweeps on a real local Ray (issue 19): a size no node can hold is refused before launch
(it used to wait forever), and a sweep whose runs failed says why and exits non-zero."""
from __future__ import annotations

import pytest
import typer

from conftest import tiny_spec, write_spec
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow


def _prepared(tmp_path, meds, **overrides):
    from medscale.scaling.pipeline import expand_over, load_spec_and_data

    spec_path = write_spec(tmp_path / "spec.yaml", tiny_spec(meds, **overrides))
    spec, prepared = load_spec_and_data(spec_path, tmp_path / "out")
    return spec, prepared, expand_over(spec, prepared, spec_path)


@pytest.mark.parametrize("resources,asked", [({"cpus": 1, "gpus": 1}, "cpus: 1, gpus: 1"), ({"cpus": 100}, "cpus: 100")])
def test_resources_no_node_offers_are_refused_before_launch(tmp_path, tiny_dataset, local_ray, resources, asked):
    from medscale.scaling.pipeline import launch_sweep

    spec, _, runs = _prepared(tmp_path, tiny_dataset[0], resources=resources)
    with pytest.raises(UserError, match=rf"each run asks for {asked}.*but no node of the Ray cluster \(1 node\(s\)\) "
                                        r"offers that \(the largest offer cpus: 2"):
        launch_sweep(spec, runs, tmp_path / "out")
    assert [run.state() for run in RunStore(tmp_path / "out").runs()] == ["pending"]  # nothing ran


def test_sweep_with_failed_runs_exits_1_naming_each_runs_first_error(tmp_path, tiny_dataset, local_ray, capsys):
    from medscale.scaling.cli import user_errors
    from medscale.scaling.pipeline import launch_sweep

    spec, prepared, runs = _prepared(tmp_path, tiny_dataset[0], retries=0)
    tokens = prepared.token_dir / "train" / "tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:200])  # the train tokens were damaged after preparation
    with pytest.raises(typer.Exit) as info:
        user_errors(lambda: launch_sweep(spec, runs, tmp_path / "out"))()
    assert info.value.exit_code == 1
    said = " ".join(capsys.readouterr().err.split())
    (run,) = list(RunStore(tmp_path / "out").runs())
    assert run.state() == "failed"
    assert f"sweep tiny: 1 of 1 runs failed (each after 1 attempts): {run.run_id}: " in said
    assert "Error" in said.split(run.run_id + ": ")[1] and "rerun with --retry-failed" in said
