"""Preemption: SIGTERM makes a run checkpoint where it is and exit resumable; resumed, it ends where an
uninterrupted run ends. Checkpoints also come by the clock (`checkpoint.every_minutes`), and checkpoint
timing is not part of what identifies a run."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.run.preemption import EXIT_PREEMPTED
from medscale.scaling.sweep.store import RunStore, config_hash

MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]


def test_checkpoint_timing_does_not_change_a_run_id():
    config = {"objective": "decoder", "model": {"d_model": 32}, "checkpoint": {"every_steps": 10}}
    timed = {**config, "checkpoint": {"every_steps": 10, "every_minutes": 5.0, "grace_seconds": 10.0}}
    assert config_hash(timed) == config_hash(config)
    assert config_hash({**config, "checkpoint": {"every_steps": 20}}) != config_hash(config)


def _train(spec_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(MEDSCALE + ["train", str(spec_path), "--out", str(out)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _only_run(out: Path):
    (run,) = RunStore(out).runs()
    return run


def _ckpt_steps(run) -> list[int]:
    return sorted(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit()) if run.ckpt_dir.exists() else []


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_run_ends_like_an_uninterrupted_one(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    steps = 80
    reference_spec = write_spec(tmp_path / "ref.yaml", tiny_spec(meds, **{"grid.tokens": [steps * 8 * 32]}))
    # no step-based checkpoint before the end: every checkpoint before it comes from the clock or from SIGTERM
    timed = tiny_spec(meds, **{"grid.tokens": [steps * 8 * 32]})
    timed["checkpoint"] = {"every_steps": 1000, "every_minutes": 0.001, "grace_seconds": 60}
    timed_spec = write_spec(tmp_path / "timed.yaml", timed)

    ref = _train(reference_spec, tmp_path / "uninterrupted")
    log, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, log
    reference = _only_run(tmp_path / "uninterrupted")

    victim = _train(timed_spec, tmp_path / "preempted")
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = list(RunStore(tmp_path / "preempted").runs())
        if runs and _ckpt_steps(runs[0]) and 10 <= max(_ckpt_steps(runs[0])) < steps - 20:
            break
        assert victim.poll() is None, victim.communicate()[0]
        time.sleep(0.02)
    else:
        pytest.fail("no clock-based checkpoint appeared")
    victim.send_signal(signal.SIGTERM)
    log, _ = victim.communicate(timeout=120)
    assert victim.returncode == EXIT_PREEMPTED, log
    run = _only_run(tmp_path / "preempted")
    status = run.status()
    assert status["state"] == "preempted" and run.metrics() is None, status
    assert status["preempted_step"] < steps
    assert max(_ckpt_steps(run)) == status["preempted_step"]  # saved where it stopped, not at a step multiple
    assert not run.lease_path.exists()

    again = _train(timed_spec, tmp_path / "preempted")
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    a, b = reference.metrics(), run.metrics()
    assert b["resumed_from_step"] == status["preempted_step"]
    assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["loss"], b["loss"])
    assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6
    curve_a, curve_b = pd.read_csv(reference.curve_path), pd.read_csv(run.curve_path)
    assert list(curve_a["step"]) == list(curve_b["step"])
    assert (curve_a["loss"] - curve_b["loss"]).abs().max() <= 1e-6
    assert run.state() == "done" and run.status()["attempts"] == 2
