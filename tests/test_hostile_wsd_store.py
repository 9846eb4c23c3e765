"""Hostile WSD stores (issue 33): one sweep name in one store has one schedule. Rerunning a sweep's name into
its --out with another schedule or cooldown is refused, naming the field, the old and new value and what to do
(it used to pool both schedules under one sweep, fitted together, and overwrite the stored spec); and a run
whose process died mid-run is reported and marked stale, never "running" for good."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import FINAL_STATES, RunStore

MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]
TOKENS = [30 * 8 * 32, 60 * 8 * 32, 120 * 8 * 32]


def wsd_spec(meds, **overrides) -> dict:
    return tiny_spec(meds, **{"grid.tokens": TOKENS, "optimizer.schedule": "wsd", **overrides})


@pytest.fixture(scope="module")
def wsd_store(tmp_path_factory, tiny_dataset):
    """A store holding a WSD sweep's runs as a launch leaves them (spec copy, run folders), nothing trained."""
    from medscale.atomic import write_yaml
    from medscale.scaling.pipeline import expand_over, load_spec_and_data

    base = tmp_path_factory.mktemp("wsd_store")
    spec_path = write_spec(base / "wsd.yaml", wsd_spec(tiny_dataset[0]))
    spec, prepared = load_spec_and_data(spec_path, base / "out")
    store = RunStore(base / "out").claim()
    write_yaml(store.root / "sweeps" / f"{spec.name}.yaml", spec.model_dump())
    runs = [store.ensure(config) for config in expand_over(spec, prepared, spec_path)]
    return base, store, runs


def _medscale(*args) -> subprocess.CompletedProcess:
    return subprocess.run(MEDSCALE + [str(a) for a in args], env=child_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("change,field,old,new", [
    ({"optimizer.schedule": "cosine"}, "optimizer.schedule", "'wsd'", "'cosine'"),
    ({"optimizer.cooldown_fraction": 0.3}, "optimizer.cooldown_fraction", "0.2", "0.3")])
def test_a_changed_schedule_is_refused_and_the_stored_spec_kept(wsd_store, tiny_dataset, change, field, old, new):
    base, store, runs = wsd_store
    copy = store.root / "sweeps" / "tiny.yaml"
    before = copy.read_bytes()
    changed = write_spec(base / "changed.yaml", wsd_spec(tiny_dataset[0], **change))
    for args in (["--dry-run", "--no-memory"], []):
        result = _medscale("sweep", changed, "--out", store.root, *args)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"holds 3 run(s) of sweep 'tiny' trained with {field} {old}" in said, said
        assert f"this spec has {field} {new}" in said and "use another --out or rename the sweep (name:)" in said
        assert f"set {field} back to {old}" in said
    assert copy.read_bytes() == before  # the stored spec is the sweep's, untouched
    assert sorted(r.run_id for r in store.runs()) == sorted(r.run_id for r in runs)  # no run of the new schedule


def test_the_library_refuses_too_and_an_unchanged_or_grown_grid_passes(wsd_store, tiny_dataset):
    from medscale.scaling.pipeline import expand_over, launch_sweep, load_spec_and_data

    base, store, runs = wsd_store
    path = write_spec(base / "cosine.yaml", wsd_spec(tiny_dataset[0], **{"optimizer.schedule": "cosine"}))
    spec, prepared = load_spec_and_data(path, store.root)
    with pytest.raises(UserError, match=r"optimizer.schedule 'wsd'.*this spec has optimizer.schedule 'cosine'"):
        launch_sweep(spec, expand_over(spec, prepared, path), store.root)
    assert len(list(store.runs())) == 3
    grown = write_spec(base / "grown.yaml", wsd_spec(tiny_dataset[0], **{"grid.tokens": TOKENS + [240 * 8 * 32]}))
    spec, prepared = load_spec_and_data(grown, store.root)
    RunStore(store.root).refuse_changed_sweep(spec.name, expand_over(spec, prepared, grown))  # a budget more: fine


def test_a_run_whose_process_died_is_reported_and_marked_stale(wsd_store):
    from medscale.scaling.sweep.scheduler import mark_stale

    _, store, runs = wsd_store
    dead, live, other = runs
    dead.set_status("running", attempts=1, pid=2**22 + 7)  # killed with -9: no lease left, nobody training it
    lease = live.acquire_lease()  # a live process trains this one
    live.set_status("running", attempts=1)
    try:
        table = store.results_frame().set_index("run_id")
        assert table.loc[dead.run_id, "status"] == "stale" and table.loc[live.run_id, "status"] == "running"
        mark_stale(store, [other], stale_after=60.0)  # a launch of another sweep into this store
        assert dead.state() == "stale" and live.state() == "running"
        assert "rerun sweep 'tiny' with its own spec to resume it" in dead.status()["error"]
        assert "stale" not in FINAL_STATES  # resumable: a rerun of its sweep queues and resumes it
    finally:
        lease.release()
