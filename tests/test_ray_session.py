"""`ray_session` (scaling/sweep/ray_session.py): Ray for a `with` block, and what it started ends with the block,
however the block ends. A real local Ray for the local case (its processes found as test_hostile_ray_processes
finds them: a mark in their environment, the Ray temp dir on their command line); stand-ins for ray.init and the
local head where a cluster or a failed start is the point."""
from __future__ import annotations

import os
import shutil
import tempfile

import psutil
import pytest
import ray

from medscale.scaling.run.runtime import malloc_env
from medscale.scaling.sweep import ray_session as session
from medscale.scaling.sweep.ray_session import ray_session
from conftest import RAY_MARK as MARK
from conftest import started_by
from test_hostile_ray_processes import kill_marked, wait_until


@pytest.fixture
def clean_env(monkeypatch):
    """start_ray sets Ray's and malloc's variables in this process's environment: put them back afterwards."""
    for key in [*malloc_env(), "RAY_USAGE_STATS_ENABLED", "MEDSCALE_RAY_TMP", MARK]:
        monkeypatch.delenv(key, raising=False)
    assert not ray.is_initialized(), "a test before this one left Ray running in this process"
    return monkeypatch


def command_lines(ray_tmp: str) -> list[str]:
    """Full command lines of the live processes that name the Ray temp dir."""
    found = []
    for proc in psutil.process_iter():
        try:
            cmd = " ".join(proc.cmdline())
            if ray_tmp in cmd and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(cmd)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_the_local_ray_a_session_started_ends_with_it_when_the_body_is_interrupted(clean_env):
    ray_tmp = tempfile.mkdtemp(prefix="ray-rs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    mark = os.urandom(8).hex()
    clean_env.setenv("MEDSCALE_RAY_TMP", ray_tmp)
    clean_env.setenv(MARK, mark)  # inherited by the watcher, and by every Ray process it starts
    try:
        with pytest.raises(KeyboardInterrupt):
            with ray_session(num_cpus=1) as started:
                assert started and ray.is_initialized()
                running = started_by(mark, ray_tmp)
                assert any("raylet" in line for line in running) and any("gcs_server" in line for line in running)
                # what a local run does not need stays off: the dashboard's frontend (Ray 2.60 still starts its
                # API server, with --disable-frontend), usage statistics, the autoscaler and log monitors
                dashboards = [cmd for cmd in command_lines(ray_tmp) if "dashboard/dashboard.py" in cmd]
                assert all("--disable-frontend" in cmd for cmd in dashboards), dashboards
                # nor the autoscaler's monitor or the log monitor (runtime._without_cluster_services)
                monitors = [cmd for cmd in command_lines(ray_tmp) if "monitor.py" in cmd]
                assert not monitors, monitors
                assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
                with ray_session() as inner:  # Ray already up: used as it is, and left running
                    assert inner is False
                assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 1
                raise KeyboardInterrupt  # Ctrl-C in the body
        assert not ray.is_initialized()
        assert session._local_head is None
        wait_until(lambda: not started_by(mark, ray_tmp), 30)  # bounded: stop() already waited for the watcher
        left = started_by(mark, ray_tmp)
        assert not left, f"Ray processes outlived the session that started them: {left}"
    finally:
        if ray.is_initialized():
            session.stop_ray()
        kill_marked(mark, ray_tmp)  # only processes carrying this test's mark or temp dir
        shutil.rmtree(ray_tmp, ignore_errors=True)


class FakeRay:
    """ray.init / ray.shutdown / ray.is_initialized, recorded; `fail` makes ray.init raise."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.calls: list = []
        self.up = False
        self.fail = fail
        monkeypatch.setattr(ray, "init", self.init)
        monkeypatch.setattr(ray, "shutdown", self.shutdown)
        monkeypatch.setattr(ray, "is_initialized", lambda: self.up)

    def init(self, address=None, **kwargs) -> None:
        self.calls.append(("init", address))
        if self.fail:
            raise ConnectionError("no Ray at that address")
        self.up = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.up = False


class FakeHead:
    """A stand-in for runtime.LocalRayHead that records its start and stop."""
    made: list = []

    def __init__(self, num_cpus: int, temp_dir: str) -> None:
        self.num_cpus, self.address, self.auth_mode, self.stopped = num_cpus, "127.0.0.1:1", "", False
        FakeHead.made.append(self)

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_head(clean_env):
    FakeHead.made = []
    clean_env.setattr(session, "LocalRayHead", FakeHead)
    return FakeHead


def test_a_session_on_a_cluster_disconnects_on_leaving_and_starts_no_local_ray(clean_env, fake_head):
    fake = FakeRay(clean_env)
    with pytest.raises(RuntimeError, match="the body failed"):
        with ray_session("10.0.0.1:6379") as started:
            assert started and fake.calls == [("init", "10.0.0.1:6379")]
            raise RuntimeError("the body failed")
    assert fake.calls == [("init", "10.0.0.1:6379"), ("shutdown",)] and not fake.up
    assert fake_head.made == []  # the cluster is not ours to stop: nothing local was started


def test_a_session_stops_its_local_head_when_ray_init_fails_and_never_runs_the_body(clean_env, fake_head):
    fake = FakeRay(clean_env, fail=True)
    ran = []
    with pytest.raises(ConnectionError):
        with ray_session(num_cpus=3):
            ran.append(True)
    assert ran == []
    assert [h.num_cpus for h in fake_head.made] == [3] and fake_head.made[0].stopped
    assert session._local_head is None and not fake.up


def test_a_session_inside_ray_already_running_changes_nothing(clean_env, fake_head):
    fake = FakeRay(clean_env)
    fake.up = True  # the caller's own ray.init
    with ray_session() as started:
        assert started is False
    assert fake.calls == [] and fake.up and fake_head.made == []


def test_a_local_session_stops_its_head_after_a_normal_exit(clean_env, fake_head):
    fake = FakeRay(clean_env)
    with ray_session(num_cpus=2) as started:
        assert started and fake.calls[-1] == ("init", "127.0.0.1:1") and not fake_head.made[0].stopped
    assert fake.calls[-1] == ("shutdown",) and fake_head.made[0].stopped and session._local_head is None
