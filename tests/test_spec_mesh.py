"""The memory and mesh keys of a sweep spec: validated against the devices a run gets, recorded in
the run config (and its identity) only when set, and a sharded run trains to a single device's loss."""
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.cli import app
from medscale.scaling.sweep.spec import SpecError, expand, parse_spec
from medscale.scaling.sweep.step_dir import identity_hash
from medscale.scaling.sweep.store import RunStore, config_hash


def _expand(raw):
    return expand(parse_spec(raw), token_dir="", vocab_size=64, dataset_id="d")


def test_specs_without_the_new_keys_keep_their_run_ids(tmp_path):
    (run,) = _expand(tiny_spec(tmp_path))
    assert "options" not in run and "mesh" not in run
    old_fields = ("sweep", "objective", "budget", "model", "param_count", "data", "train", "eval", "checkpoint")
    legacy = {k: run[k] for k in old_fields}
    legacy["data"] = {k: run["data"][k] for k in ("dataset_id", "seq_len", "batch_size", "mask_prob")}
    legacy["checkpoint"] = {"every_steps": run["checkpoint"]["every_steps"]}  # what the first stores wrote
    assert config_hash(run) == identity_hash(legacy)


def test_options_and_mesh_reach_the_run_config(tmp_path):
    raw = tiny_spec(tmp_path, **{"model.attention": "flash", "model.remat": "full", "optimizer.microbatches": 2,
                                 "resources.host_devices": 4, "resources.mesh": {"fsdp": 2}})
    (run,) = _expand(raw)
    assert run["options"] == {"attention": "flash", "remat": "full", "microbatches": 2}
    assert run["mesh"] == {"fsdp": 2}
    (plain,) = _expand(tiny_spec(tmp_path, **{"resources.host_devices": 4, "resources.mesh": {"fsdp": 2}}))
    assert config_hash(run) != config_hash(plain)  # how a run is computed is part of what it is


@pytest.mark.parametrize("resources, optimizer, key", [
    ({"host_devices": 4, "mesh": {"fsdp": 3}}, {}, "resources.mesh.fsdp"),
    ({"gpus": 8, "mesh": {"data": -1, "fsdp": -1}}, {}, "resources.mesh"),
    ({"host_devices": 4, "mesh": {"fsdp": 4}}, {"batch_size": 8, "microbatches": 4}, "optimizer.microbatches"),
    ({"cpus": 1}, {"batch_size": 8, "microbatches": 3}, "optimizer.microbatches"),
])
def test_layouts_that_do_not_fit_the_devices_name_the_key(tmp_path, resources, optimizer, key):
    raw = tiny_spec(tmp_path)
    raw["resources"] = resources
    raw["optimizer"].update(optimizer)
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        _expand(raw)
    path = write_spec(tmp_path / "bad.yaml", raw)
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 2 and key in result.output and "Traceback" not in result.output


def _train(spec_path, out, name):
    env = child_env()  # the run sets its own devices
    done = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "train", str(spec_path), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = [r for r in RunStore(out).runs() if r.config()["sweep"] == name]
    return run.metrics()


@pytest.mark.slow
def test_sharded_run_from_the_spec_matches_a_single_device(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    short = {"grid.tokens": [12 * 8 * 32], "eval.n_evals": 1, "checkpoint.every_steps": 100}
    # one store (the dataset is prepared once); the sweep names keep the two runs apart
    single = _train(write_spec(tmp_path / "one.yaml", tiny_spec(meds, **short, name="one")), tmp_path / "o", "one")
    sharded_spec = tiny_spec(meds, **short, name="four", **{"resources.host_devices": 4,
                                                            "resources.mesh": {"data": -1, "fsdp": 2}})
    sharded = _train(write_spec(tmp_path / "four.yaml", sharded_spec), tmp_path / "o", "four")
    assert single["devices"] == 1 and sharded["devices"] == 4
    assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert sharded["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
