"""Run store: hash-named folders, atomic writes, leases that exclude a second holder."""
import json
import subprocess
import sys
import time

import pytest

from medscale.atomic import write_json
from medscale.scaling.sweep.store import LeaseHeld, RunStore, config_hash

CONFIG = {
    "sweep": "s", "objective": "decoder", "budget": None,
    "model": {"vocab_size": 100, "d_model": 32, "n_layers": 1, "n_heads": 1, "d_ff": 96, "max_len": 64, "causal": True},
    "data": {"token_dir": "/a/tokens", "dataset_id": "abc", "seq_len": 32, "batch_size": 4, "mask_prob": 0.15},
    "train": {"tokens": 1280, "steps": 10, "seed": 0, "lr": 1e-3},
    "eval": {"n_evals": 2, "batches": 1}, "checkpoint": {"every_steps": 5},
}


def test_hash_ignores_location_but_not_content():
    moved = json.loads(json.dumps(CONFIG))
    moved["data"]["token_dir"] = "/elsewhere/tokens"
    assert config_hash(moved) == config_hash(CONFIG)
    changed = json.loads(json.dumps(CONFIG))
    changed["train"]["lr"] = 2e-3
    assert config_hash(changed) != config_hash(CONFIG)


def test_ensure_is_idempotent(tmp_path):
    store = RunStore(tmp_path)
    a = store.ensure(CONFIG)
    a.set_status("done", attempts=1)
    b = store.ensure(CONFIG)
    assert a.path == b.path and b.state() == "done"
    assert [r.run_id for r in store.runs()] == [a.run_id]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "status.json"
    write_json(target, {"state": "done"})

    class Boom(Exception):
        pass

    from medscale.atomic import write_with

    def failing(p):
        p.write_text("{partial")
        raise Boom

    with pytest.raises(Boom):
        write_with(target, failing)
    assert json.loads(target.read_text()) == {"state": "done"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_lease_excludes_second_holder_and_is_released(tmp_path):
    run = RunStore(tmp_path).ensure(CONFIG)
    lease = run.acquire_lease(stale_after=30)
    with pytest.raises(LeaseHeld):
        run.acquire_lease(stale_after=30)
    lease.release()
    run.acquire_lease(stale_after=30).release()
    assert not run.lease_path.exists()


def test_stale_heartbeat_lease_is_broken(tmp_path):
    run = RunStore(tmp_path).ensure(CONFIG)
    write_json(run.lease_path, {"token": "old", "host": "another-host", "pid": 1, "heartbeat_at": time.time() - 120})
    assert not run.lease_is_live(stale_after=60)
    lease = run.acquire_lease(stale_after=60)
    assert json.loads(run.lease_path.read_text())["token"] == lease.token
    lease.release()


def test_lease_of_dead_local_process_is_broken_at_once(tmp_path):
    run = RunStore(tmp_path).ensure(CONFIG)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    import socket

    write_json(run.lease_path, {"token": "dead", "host": socket.gethostname(), "pid": proc.pid,
                                "heartbeat_at": time.time()})
    assert not run.lease_is_live(stale_after=600)
    run.acquire_lease(stale_after=600).release()


def test_heartbeat_keeps_lease_fresh(tmp_path):
    run = RunStore(tmp_path).ensure(CONFIG)
    lease = run.acquire_lease(stale_after=1.0, heartbeat_s=0.1)
    first = json.loads(run.lease_path.read_text())["heartbeat_at"]
    time.sleep(1.3)
    assert json.loads(run.lease_path.read_text())["heartbeat_at"] > first
    with pytest.raises(LeaseHeld):
        run.acquire_lease(stale_after=1.0)
    lease.release()


CONTENDER = """
import os, pathlib, sys, time
from medscale.scaling.sweep.store import LeaseHeld, RunDir
start_at, n = float(sys.argv[2]), int(sys.argv[3])
tried = pathlib.Path(sys.argv[1]).parent / "tried"
while time.time() < start_at:
    pass
try:
    lease = RunDir(sys.argv[1]).acquire_lease(stale_after=60)
except LeaseHeld:
    lease = None
(tried / str(os.getpid())).touch()
print("held" if lease is None else "won")
if lease is not None:  # hold it until every contender has tried, however slow the machine
    deadline = time.time() + 90
    while len(list(tried.iterdir())) < n and time.time() < deadline:
        time.sleep(0.05)
    lease.release()
"""


@pytest.mark.parametrize("stale_lease_present", [False, True])
def test_concurrent_acquire_has_exactly_one_winner(tmp_path, stale_lease_present):
    run = RunStore(tmp_path).ensure(CONFIG)
    if stale_lease_present:  # contenders must also race to break it, and still only one may win
        write_json(run.lease_path, {"token": "dead", "host": "gone", "pid": 1, "heartbeat_at": time.time() - 600})
    start_at = time.time() + 4.0  # every process is up and spinning by then
    (run.path.parent / "tried").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(run.path), str(start_at), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outcomes]
    said = [out.strip() for out, _ in outcomes]
    assert sorted(said) == ["held"] * 5 + ["won"], said


def test_results_table_written_atomically_with_metrics(tmp_path):
    import pandas as pd

    store = RunStore(tmp_path)
    run = store.ensure(CONFIG)
    write_json(run.metrics_path, {"loss": 2.5, "params": 1234, "tokens": 1280})
    run.set_status("done", attempts=1)
    df = store.write_results()
    assert df.loc[0, "loss"] == 2.5 and df.loc[0, "status"] == "done" and df.loc[0, "d_model"] == 32
    assert pd.read_parquet(tmp_path / "results.parquet").loc[0, "params"] == 1234
    assert pd.read_csv(tmp_path / "results.csv").loc[0, "run_id"] == run.run_id


def test_run_folders_are_named_by_kind_and_hash_of_their_defining_fields(tmp_path):
    from medscale.scaling.sweep.store import run_id

    run = RunStore(tmp_path).ensure(CONFIG)
    assert run.run_id == run_id(CONFIG) == f"decoder-{config_hash(CONFIG)}"
    undefined = json.loads(json.dumps(CONFIG))
    undefined["notes"] = "a field no run identity lists"  # only the listed fields define a run
    assert run_id(undefined) == run.run_id


def test_status_history_is_append_only_and_survives_a_torn_line(tmp_path):
    run = RunStore(tmp_path).ensure(CONFIG)
    run.set_status("running", attempts=1)
    run.set_status("failed", error="boom")
    with open(run.history_path, "a") as f:
        f.write('{"state": "done", "at"')  # a writer killed mid-append
    assert [e["state"] for e in run.history()] == ["pending", "running", "failed"]
    assert run.status()["attempts"] == 1 and run.state() == "failed"  # fields accumulate over the history
    run.set_status("running", attempts=2)
    assert [e["state"] for e in run.history()] == ["pending", "running", "failed", "running"]


def test_a_store_from_the_previous_layout_is_read_and_adopted(tmp_path):
    import yaml

    legacy = tmp_path / "runs" / config_hash(CONFIG)
    legacy.mkdir(parents=True)
    (legacy / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    write_json(legacy / "status.json", {"state": "done", "attempts": 1})
    write_json(legacy / "metrics.json", {"loss": 3.0, "params": 10, "tokens": 1280})
    store = RunStore(tmp_path)
    (only,) = store.results_frame().to_dict("records")
    assert only["status"] == "done" and only["loss"] == 3.0  # still read as it is
    run = store.ensure(CONFIG)  # a sweep reaching it renames it to the prefixed name, state and all
    assert run.run_id.startswith("decoder-") and run.state() == "done" and not legacy.exists()
    assert run.metrics()["loss"] == 3.0


def test_downstream_results_of_the_previous_layout_are_refused_with_what_to_do(tmp_path):
    from medscale.scaling.downstream import load_downstream_spec
    from medscale.scaling.downstream.evaluate import evaluate_store
    from medscale.scaling.errors import UserError

    (tmp_path / "runs").mkdir()
    (tmp_path / "downstream.csv").write_text("run_id,task\nabc,t\n")
    with pytest.raises(UserError, match="mv .*downstream.csv .*legacy"):
        evaluate_store(tmp_path, load_downstream_spec({"tasks": ["med_start_30d"]}))
