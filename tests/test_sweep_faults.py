"""Sweeps on Ray survive a killed worker and a killed driver, and never run a run twice."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import child_env, marked_env, started_by, tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]
TWO_SIZES = [{"d_model": 32, "n_layers": 2, "n_heads": 2}, {"d_model": 48, "n_layers": 2, "n_heads": 2}]


def _env(tmp_path: Path) -> dict:
    return child_env()


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended before {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _kill_machine(driver: subprocess.Popen, mark: str, ray_tmp: str) -> None:
    """SIGKILL the driver's process group and every process it started (conftest.started_by: its mark, its Ray temp
    dir), as if the node died. Ray's daemons start their own sessions, so a process-group kill alone leaves them,
    and their workers, running; no other process on the machine (another test's, another user's) is touched."""
    known = psutil.Process(driver.pid).children(recursive=True) if driver.poll() is None else []
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for line in started_by(mark, ray_tmp, known):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(1.0)


def _ckpt_steps(run) -> list[int]:
    return sorted(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit()) if run.ckpt_dir.exists() else []


def _leased_run_with_checkpoint(out: Path, at_most: int | None = None):
    """A run in training (leased) with a checkpoint (its newest at step `at_most` or before, if given)."""
    for run in RunStore(out).runs():
        info = run.lease_info()
        steps = _ckpt_steps(run)
        if info and steps and (at_most is None or steps[-1] <= at_most):
            return run, info
    return None


def test_killed_ray_worker_is_retried_and_resumes(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    spec = write_spec(tmp_path / "sweep.yaml", tiny_spec(meds, **{"grid.params": TWO_SIZES}))
    out = tmp_path / "out"
    driver = subprocess.Popen(MEDSCALE + ["sweep", str(spec), "--out", str(out)], env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        run, lease = _wait_for(lambda: _leased_run_with_checkpoint(out), 300, driver, "a checkpointed run")
        os.kill(lease["pid"], signal.SIGKILL)  # the Ray worker process training this run
        log, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, log
    runs = list(RunStore(out).runs())
    assert len(runs) == 2 and all(r.state() == "done" for r in runs), log
    killed = next(r for r in runs if r.run_id == run.run_id)
    metrics = killed.metrics()
    assert killed.status()["attempts"] == 2
    assert metrics["resumed_from_step"] >= 10
    import pandas as pd

    results = pd.read_parquet(out / "results.parquet")
    assert set(results["run_id"]) == {r.run_id for r in runs}
    assert results["loss"].notna().all() and (results["loss"] < 10).all()


def test_killed_driver_relaunch_completes_only_what_is_missing(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    sizes = TWO_SIZES + [{"d_model": 64, "n_layers": 2, "n_heads": 2}]
    # 120 steps a run, the kill decided by its step 60: the checkpointed run is still training when the kill lands
    # (with 60 steps, a loaded machine let it finish first and the kill hit the next run, before its first save)
    spec = write_spec(tmp_path / "sweep.yaml",
                      tiny_spec(meds, **{"grid.params": sizes, "grid.tokens": [120 * 8 * 32]}))
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ray-sf-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env, mark = marked_env(ray_tmp)
    first = subprocess.Popen(MEDSCALE + ["sweep", str(spec), "--out", str(out), "--max-concurrent", "1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        _wait_for(lambda: any(r.state() == "done" for r in RunStore(out).runs())
                  and _leased_run_with_checkpoint(out, at_most=60), 400, first, "one run done and another checkpointed")
    finally:
        _kill_machine(first, mark, ray_tmp)  # the driver, the local Ray it started and its workers
        shutil.rmtree(ray_tmp, ignore_errors=True)
    before = {r.run_id: (r.state(), r.status().get("finished_at")) for r in RunStore(out).runs()}
    done_before = {k for k, (state, _) in before.items() if state == "done"}
    assert 1 <= len(done_before) < 3
    saved = {r.run_id: _ckpt_steps(r)[-1] for r in RunStore(out).runs()
             if r.run_id not in done_before and _ckpt_steps(r)}
    assert saved, "the kill landed after the checkpointed run had finished (and before the next one saved)"

    second = subprocess.run(MEDSCALE + ["sweep", str(spec), "--out", str(out)], env=_env(tmp_path),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    runs = {r.run_id: r for r in RunStore(out).runs()}
    assert len(runs) == 3 and all(r.state() == "done" for r in runs.values())
    for run_id in done_before:  # finished runs were not touched again
        assert runs[run_id].status()["finished_at"] == before[run_id][1]
        assert runs[run_id].status()["attempts"] == 1
    for run_id, step in saved.items():  # a run checkpointed before the kill resumes there, not from step 0
        assert runs[run_id].metrics()["resumed_from_step"] == step, run_id
