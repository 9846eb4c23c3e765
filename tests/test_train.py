"""A training run survives SIGKILL: resumed, it ends exactly where an uninterrupted run ends."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]


def _env() -> dict:
    return child_env()  # the run sets its own host-device count


def _train(spec_path: Path, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(MEDSCALE + ["train", str(spec_path), "--out", str(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _only_run(out: Path):
    runs = list(RunStore(out).runs())
    assert len(runs) == 1
    return runs[0]


def _checkpoint_steps(run) -> list[int]:
    if not run.ckpt_dir.exists():
        return []
    return sorted(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit())


def test_sigkilled_run_resumes_to_the_same_final_loss(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    spec = write_spec(tmp_path / "run.yaml", tiny_spec(meds))

    ref = _train(spec, tmp_path / "uninterrupted")
    log, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, log
    reference = _only_run(tmp_path / "uninterrupted")

    victim = _train(spec, tmp_path / "killed")
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = list(RunStore(tmp_path / "killed").runs())
        if runs and _checkpoint_steps(runs[0]) and max(_checkpoint_steps(runs[0])) >= 20:
            break
        assert victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    else:
        pytest.fail("no checkpoint appeared")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = _only_run(tmp_path / "killed")
    assert killed.state() == "running" and killed.metrics() is None

    again = _train(spec, tmp_path / "killed")
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    assert "resumed from step" in log
    a, b = reference.metrics(), killed.metrics()
    assert b["resumed_from_step"] >= 20
    assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["loss"], b["loss"])
    assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6
    curve_a, curve_b = pd.read_csv(reference.curve_path), pd.read_csv(killed.curve_path)
    assert list(curve_a["step"]) == list(curve_b["step"])
    assert (curve_a["loss"] - curve_b["loss"]).abs().max() <= 1e-6
    assert killed.status()["attempts"] == 2 and killed.state() == "done"

    # Rerunning a finished run is a no-op that reports the same result.
    done = _train(spec, tmp_path / "killed")
    log, _ = done.communicate(timeout=120)
    assert done.returncode == 0 and json.loads(log[log.index("{"):])["loss"] == pytest.approx(b["loss"], abs=0)
    assert killed.status()["attempts"] == 2


def test_nan_loss_marks_run_diverged_with_step(tmp_path, tiny_dataset):
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.run.train import execute_run

    meds, tokens = tiny_dataset
    spec = parse_spec(tiny_spec(meds))
    config = expand(spec, token_dir=str(tokens), vocab_size=json.loads((tokens / "manifest.json").read_text())["vocab_size"],
                    dataset_id="tiny")[0]
    config = config.replace(train={"lr": 1e30, "warmup_steps": 1})  # no spec allows this; a config by hand can
    run = RunStore(tmp_path).ensure(config)
    assert execute_run(run, devices=1) == "diverged"
    status = run.status()
    assert status["state"] == "diverged" and 1 <= status["diverged_step"] <= 60
    assert "loss became" in status["error"] and run.metrics() is None
