"""The Ray a local sweep starts ends with it (issue 33): after kill -9 of the driver, no Ray process it started
(raylet, GCS, DashboardAgent, RuntimeEnvAgent, workers) outlives it. Every process the driver starts inherits
its environment, so a unique mark there finds them all, whatever their process group, session or parent."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from conftest import marked_env, started_by, tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]


def wait_until(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    return predicate()


def kill_marked(mark: str, ray_tmp: str) -> None:
    """Clean-up after a failed test: only the processes this test started."""
    for line in started_by(mark, ray_tmp):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass


def test_kill_9_of_the_sweep_driver_leaves_no_ray_process_behind(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0], **{"grid.tokens": [4000 * 8 * 32]}))
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ray-h33-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env, mark = marked_env(ray_tmp)
    driver = subprocess.Popen(MEDSCALE + ["sweep", str(spec), "--out", str(out)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        running = lambda: any(r.state() == "running" for r in RunStore(out, say=lambda m: None).runs())  # noqa: E731
        assert wait_until(running, 300, driver, "a run started"), "no run started within 300 s"
        known = psutil.Process(driver.pid).children(recursive=True)
        before = started_by(mark, ray_tmp, known)
        assert any("raylet" in line for line in before) and any("ray::" in line for line in before), before
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        driver.wait(timeout=30)
        # a bounded wait: the watcher ends them in seconds; left to Ray, the agents (parent 1) lived 60-90 s more
        wait_until(lambda: not started_by(mark, ray_tmp, known), 30)
        left = started_by(mark, ray_tmp, known)
        assert not left, f"Ray processes outlived the killed driver: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_marked(mark, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
