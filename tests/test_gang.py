"""Multi-process runs: each process loads its share of the batch, a gang of 2 processes x 2 devices
trains exactly like 1 process x 4 devices, and a gang with a SIGKILLed process is torn down and
restarted from its checkpoint to the same final loss."""
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.data.loader import train_batches
from medscale.scaling.sweep.store import RunStore


@pytest.mark.parametrize("objective", ["next_event", "masked_event"])
def test_process_shares_are_rows_of_the_global_batch(tiny_dataset, objective):
    _, token_dir = tiny_dataset
    kw = dict(seq_len=16, batch_size=6, objective=objective, seed=3)
    whole = train_batches(token_dir, **kw)
    shares = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([1, 4])]  # two halves; a strided share
    parts = [train_batches(token_dir, rows=rows, **kw) for rows in shares]
    for step in (0, 1, 7, 250):  # 250: past the first epoch, where the order is reshuffled
        batch = whole[step]
        for rows, part in zip(shares, parts):
            for key, value in part[step].items():
                np.testing.assert_array_equal(value, batch[key][rows], err_msg=f"{key} at step {step}")
        assert not np.array_equal(parts[0][step]["inputs"], parts[1][step]["inputs"])


VOTER = """
import json, sys
from medscale.scaling.run.runtime import configure_process
configure_process(host_devices=2, start_backend=False)
from medscale.scaling.run.distributed import Agreement, broadcast_from_primary, join_gang
rank = int(sys.argv[2])
join_gang(sys.argv[1], 2, rank, cpu=True)
agreement = Agreement()
decisions = [agreement.vote(stop=(rank == 1 and step == 2), checkpoint=(step == 4)) for step in range(7)]
print("RESULT", json.dumps({"decisions": decisions, "go": broadcast_from_primary(7 if rank == 0 else 0)}))
"""


def test_processes_agree_on_when_to_stop_and_checkpoint():
    from medscale.scaling.run.distributed import free_coordinator_port

    port = free_coordinator_port()
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-c", VOTER, f"127.0.0.1:{port}", str(rank)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert all("RESULT " in out for out, _ in outs), [out[-2000:] + err[-2000:] for out, err in outs]
    # gloo writes to the same stdout from C++, which may run into the line: take the JSON after the word
    results = [json.JSONDecoder().raw_decode(out[out.index("RESULT ") + 7:])[0] for out, _ in outs]
    # process 1's stop request (step 2) and process 0's clock (step 4) reach both, one step later
    expected = [[False, False]] * 3 + [[True, False], [False, False], [False, True], [False, False]]
    assert results[0]["decisions"] == results[1]["decisions"] == expected
    assert results[0]["go"] == results[1]["go"] == 7  # process 0's word, everywhere


def _ckpt_steps(run) -> list[int]:
    return sorted(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit()) if run.ckpt_dir.exists() else []


@pytest.mark.slow
def test_gang_of_two_processes_matches_one_and_survives_a_killed_process(tmp_path, tiny_dataset):
    import ray

    from medscale.scaling.pipeline import expand_over, load_spec_and_data
    from medscale.scaling.sweep.scheduler import run_sweep

    meds, _ = tiny_dataset
    # 30 steps, a checkpoint every 10: the kill lands between the first checkpoint and the end. Two devices per
    # process, as a multi-GPU host has several: on one core each, a step costs about 0.6 s, far more on a loaded
    # machine, so the steps are few
    spec_path = write_spec(tmp_path / "gang.yaml", tiny_spec(meds, **{"grid.tokens": [30 * 8 * 32]}))
    spec, prepared = load_spec_and_data(spec_path, tmp_path / "data")
    (config,) = expand_over(spec, prepared, spec_path)
    one, gang = RunStore(tmp_path / "one"), RunStore(tmp_path / "gang")
    reference, killed = one.ensure(config), gang.ensure(config)
    assert reference.run_id == killed.run_id  # hosts are not part of what a run computes

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: os.environ.get(k) for k in ("XLA_FLAGS",)}
    os.environ["XLA_FLAGS"] = child_env()["XLA_FLAGS"]  # workers set their own device counts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=ray_tmp)
    try:
        run_sweep(one, [reference], cpus=1, host_devices=4, hosts=1)
        assert reference.state() == "done", reference.status()
        assert reference.metrics()["devices"] == 4 and reference.metrics()["processes"] == 1

        outcome: dict = {}
        sweep = threading.Thread(target=lambda: outcome.update(
            table=run_sweep(gang, [killed], cpus=1, host_devices=2, hosts=2)))
        sweep.start()
        victim = None
        deadline = time.time() + 240
        while time.time() < deadline and sweep.is_alive():
            rank1 = killed.path / "gang" / "rank1.json"
            steps = _ckpt_steps(killed)
            if rank1.exists() and steps and 10 <= max(steps) < 30:
                victim = json.loads(rank1.read_text())
                os.kill(victim["pid"], signal.SIGKILL)  # process 1 of the gang dies mid-run
                break
            time.sleep(0.05)
        sweep.join(timeout=300)
        assert not sweep.is_alive()
        assert victim is not None, "the gang finished before a checkpoint could be caught"
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        os.environ.update({k: v for k, v in env.items() if v is not None})

    assert killed.state() == "done", killed.status()
    a, b = reference.metrics(), killed.metrics()
    assert b["processes"] == 2 and b["devices"] == 4
    assert b["resumed_from_step"] >= 10
    assert killed.status()["attempts"] == 2  # the gang was restarted once, as a whole
    assert json.loads((killed.path / "gang" / "rank1.json").read_text())["attempt"] == 1
    assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["loss"], b["loss"])
    assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5
    curve_a, curve_b = pd.read_csv(reference.curve_path), pd.read_csv(killed.curve_path)
    assert list(curve_a["step"]) == list(curve_b["step"])
    assert (curve_a["loss"] - curve_b["loss"]).abs().max() <= 1e-5
    assert not killed.lease_path.exists()


def test_spec_hosts_and_checkpoint_timing(tiny_dataset):
    from medscale.scaling.sweep.spec import SpecError, expand, parse_spec

    meds, _ = tiny_dataset
    with pytest.raises(SpecError, match="resources.hosts"):
        parse_spec(tiny_spec(meds, **{"resources": {"cpus": 1, "hosts": 0}}))
    spec = parse_spec(tiny_spec(meds, **{"resources": {"cpus": 1, "hosts": 2},
                                         "checkpoint": {"every_steps": 10, "every_minutes": 5}}))
    (run,) = expand(spec, token_dir="t", vocab_size=100, dataset_id="d")
    assert spec.resources.hosts == 2
    assert run["checkpoint"] == {"every_steps": 10, "every_minutes": 5.0, "grace_seconds": 25.0}
    (plain,) = expand(parse_spec(tiny_spec(meds)), token_dir="t", vocab_size=100, dataset_id="d")
    assert plain["checkpoint"] == {"every_steps": 10, "grace_seconds": 25.0}
    from medscale.scaling.sweep.store import run_id

    assert run_id(run) == run_id(plain)  # hosts and checkpoint timing do not change what a run computes


def test_the_coordinator_port_is_below_the_ephemeral_range_and_never_one_in_use():
    """JAX's coordinator listens with SO_REUSEPORT: a port some other server holds would be shared silently.
    free_coordinator_port draws from COORDINATOR_PORTS and skips a port that something listens on."""
    import random

    from medscale.scaling.run.distributed import COORDINATOR_PORTS, free_coordinator_port

    low, high = COORDINATOR_PORTS
    assert all(low <= free_coordinator_port() <= high for _ in range(20))
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gRPC server binds
        held.bind(("", random.Random(5).randint(low, high)))
        held.listen()
        taken = held.getsockname()[1]
        picks = {free_coordinator_port(random.Random(5)) for _ in range(3)}  # the same draws: `taken` first
        assert taken not in picks and all(low <= p <= high for p in picks)
