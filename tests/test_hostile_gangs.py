"""Hostile gangs (issue 33): a gang no cluster can hold is refused before launch, like a too-large `cpus` (it
used to sit at "1 running" for ever), and SIGTERM to a gang sweep's process group (Ctrl-C in a terminal,
`timeout`, a batch system) ends it with the resume hint and leaves no Ray process behind (the group signal
used to kill Ray's GCS under the driver: 60 s more, "Failed to connect to GCS", no hint, idle workers left)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

import psutil
import pytest

from conftest import tiny_spec, write_spec
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import RunStore
from test_hostile_ray_processes import MEDSCALE, kill_marked, marked_env, started_by, wait_until

TRACEBACK_SIGNS = ("Traceback", "Failed to connect to GCS", "logging.cc", "SIGTERM received")


def test_a_gang_no_cluster_can_hold_is_refused_before_launch(tmp_path, tiny_dataset, local_ray):
    from medscale.scaling.pipeline import expand_over, launch_sweep, load_spec_and_data
    from medscale.scaling.sweep.scheduler import refuse_infeasible

    spec_path = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0], resources={"cpus": 1, "hosts": 3}))
    spec, prepared = load_spec_and_data(spec_path, tmp_path / "out")
    with pytest.raises(UserError, match=r"resources.hosts: each run is a gang of 3 processes asking for cpus: 1 each, "
                                        r"but the Ray cluster \(1 node\(s\); in all cpus: 2.*holds at most 2 such "
                                        r"process\(es\) at once.*Lower resources.hosts"):
        launch_sweep(spec, expand_over(spec, prepared, spec_path), tmp_path / "out")
    assert [run.state() for run in RunStore(tmp_path / "out").runs()] == ["pending"]  # nothing ran
    refuse_infeasible(1, 0, 0, hosts=2)  # two one-core processes fit the two cores
    with pytest.raises(UserError, match=r"gang of 2 processes asking for cpus: 2 each.*holds at most 1 such"):
        refuse_infeasible(2, 0, 0, hosts=2)


@pytest.mark.slow
def test_sigterm_to_a_gang_sweeps_process_group_ends_with_the_hint_and_leaves_no_ray(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0], **{
        "resources": {"cpus": 1, "hosts": 2}, "grid.tokens": [4000 * 8 * 32]}))
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ray-h33-", dir="/tmp")
    env, mark = marked_env(ray_tmp)
    driver = subprocess.Popen(MEDSCALE + ["sweep", str(spec), "--out", str(out)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        gang_up = lambda: any((r.path / "gang" / "rank1.json").exists() for r in RunStore(out).runs())  # noqa: E731
        assert wait_until(gang_up, 300, driver, "the gang started"), "the gang did not start within 300 s"
        known = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGTERM)  # the whole group, as Ctrl-C or `timeout` signal it
        log, _ = driver.communicate(timeout=120)
        assert driver.returncode == 128 + signal.SIGTERM, log
        assert "error: terminated (SIGTERM); rerun the same command to resume" in log, log
        assert not any(sign in log for sign in TRACEBACK_SIGNS), log
        wait_until(lambda: not started_by(mark, ray_tmp, known), 30)
        assert not started_by(mark, ray_tmp, known)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        kill_marked(mark, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
