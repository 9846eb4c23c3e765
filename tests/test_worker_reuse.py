"""A Ray worker trains several runs one after another (scheduler.WORKER_MAX_CALLS), with the results a fresh
process gives; runs of another process shape (host devices) get workers of their own."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
SIZES = [{"d_model": 16, "n_layers": 1, "n_heads": 1}, {"d_model": 24, "n_layers": 1, "n_heads": 1}]


def _prepare(tmp_path, meds, name: str, **overrides):
    from medscale.scaling.pipeline import expand_over, load_spec_and_data

    spec_path = write_spec(tmp_path / f"{name}.yaml", tiny_spec(meds, name=name, **overrides))
    spec, prepared = load_spec_and_data(spec_path, tmp_path / "out")
    return spec, expand_over(spec, prepared, spec_path)


def _launch(tmp_path, spec, runs):
    from medscale.scaling.pipeline import launch_sweep

    launch_sweep(spec, runs, tmp_path / "out", max_concurrent=1)
    return [r for r in RunStore(tmp_path / "out").runs() if r.config()["sweep"] == spec.name]


def test_one_worker_trains_a_sweeps_runs_as_a_fresh_process_would(tmp_path, tiny_dataset, local_ray):
    meds = tiny_dataset[0]
    runs = _launch(tmp_path, *_prepare(tmp_path, meds, "reuse", **{"grid.params": SIZES, "grid.tokens": [20 * 8 * 32]}))
    assert len(runs) == 2 and all(r.state() == "done" for r in runs)
    assert len({r.status()["pid"] for r in runs}) == 1, "each run started a worker process of its own"
    # the run trained last, in a worker that had already trained one, against a fresh `medscale train` process
    last = max(runs, key=lambda r: r.status()["started_at"])
    shape = {k: last.config()["model"][k] for k in ("d_model", "n_layers", "n_heads")}
    one = tiny_spec(meds, name="alone", **{"grid.params": [shape], "grid.tokens": [20 * 8 * 32]})
    alone = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "train", str(write_spec(tmp_path / "one.yaml", one)),
                            "--out", str(tmp_path / "alone")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    fresh = json.loads(alone.stdout[alone.stdout.index("{"):])
    assert fresh["loss"] == last.metrics()["loss"]


def test_tasks_of_another_process_shape_never_get_a_worker_set_up_for_this_one(local_ray):
    """Pinning and XLA's host-device count are fixed when a worker first trains: Ray must not hand its idle
    worker to a run that needs another shape (it does, for tasks with the same runtime_env)."""
    from medscale.scaling.sweep.scheduler import worker_env

    def worker_pid() -> int:  # defined here, so that Ray ships it by value (tests/ is not importable there)
        import os

        return os.getpid()

    def pid(cpus, host_devices):
        task = local_ray.remote(max_calls=8)(worker_pid).options(num_cpus=1, runtime_env=worker_env(cpus, host_devices, False))
        return local_ray.get(task.remote())

    first = pid(1, 1)
    assert pid(1, None) == first  # host devices default to one per core: the same shape, the same worker
    assert pid(1, 2) != first
