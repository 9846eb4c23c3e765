"""A WSD sweep on Ray: the trunk runs first, each branch starts from its fork checkpoint (never before it
exists), and a relaunch skips what is done."""
import subprocess
import sys

import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]
STEP_TOKENS = 8 * 32


def _env() -> dict:
    return child_env()


def test_wsd_sweep_orders_branches_after_their_forks_and_relaunch_skips_done(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    spec = write_spec(tmp_path / "sweep.yaml", tiny_spec(meds, **{
        "grid.tokens": [30 * STEP_TOKENS, 60 * STEP_TOKENS, 120 * STEP_TOKENS], "optimizer.schedule": "wsd"}))
    out = tmp_path / "out"
    cmd = MEDSCALE + ["sweep", str(spec), "--out", str(out), "--max-concurrent", "1"]
    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = {r.config()["train"]["steps"]: r for r in RunStore(out).runs()}
    assert sorted(runs) == [30, 60, 120] and all(r.state() == "done" for r in runs.values())
    trunk = runs[120]
    assert "forked_at_step" not in trunk.metrics()
    for steps, fork in ((30, 24), (60, 48)):
        branch = runs[steps]
        assert branch.metrics()["forked_at_step"] == fork
        fork_made = (trunk.path / "forks" / str(fork)).stat().st_mtime
        started = [h["started_at"] for h in branch.history() if h.get("started_at")]
        assert started and min(started) >= fork_made  # never started before its fork checkpoint existed
    finished = {r.run_id: r.status()["finished_at"] for r in runs.values()}

    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    for run in RunStore(out).runs():
        assert run.status()["finished_at"] == finished[run.run_id] and run.status()["attempts"] == 1
    table = RunStore(out).results_frame().set_index("run_id")
    assert table.loc[runs[30].run_id, "parent"] == trunk.run_id and table.loc[runs[30].run_id, "fork_step"] == 24
