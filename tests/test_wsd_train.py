"""A WSD branch forked from its trunk's checkpoint ends exactly where its budget trained from scratch ends.

Bitwise, on CPU: before the branch's cooldown starts the trunk's learning rate is the same float32 value
as the from-scratch run's (warmup, then exactly the peak), the batch of step s depends only on (seed, s),
every run of one shape runs one compiled program (the schedule is traced state), and checkpoints store
float32 exactly; XLA on CPU is deterministic for a fixed program and inputs. So nothing differs."""
import json

import numpy as np
import pytest

from conftest import tiny_spec
from medscale.scaling.sweep.spec import expand, parse_spec
from medscale.scaling.sweep.store import RunStore, run_id
from medscale.scaling.run.train import execute_run
from medscale.scaling.sweep.wsd import fork_of, fork_ready

pytestmark = pytest.mark.slow
STEP_TOKENS = 8 * 32


def wsd_runs(meds, tokens, **kw) -> list[dict]:
    raw = tiny_spec(meds, **{"grid.tokens": [30 * STEP_TOKENS, 60 * STEP_TOKENS], "optimizer.schedule": "wsd",
                             "optimizer.cooldown_shape": "1-sqrt", **kw})
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    return expand(parse_spec(raw), token_dir=str(tokens), vocab_size=vocab, dataset_id="tiny")


def final_params(run) -> dict:
    import orbax.checkpoint as ocp

    step = max(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore((run.ckpt_dir / str(step) / "default").absolute())
    return {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in
            __import__("jax").tree_util.tree_flatten_with_path(restored["params"])[0]}


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    """A trunk and its branch trained without interruption: (trunk config, branch config, store)."""
    meds, tokens = tiny_dataset
    trunk_cfg, branch_cfg = sorted(wsd_runs(meds, tokens), key=lambda r: -r["train"]["steps"])
    store = RunStore(tmp_path_factory.mktemp("wsd") / "store")
    trunk, branch = store.ensure(trunk_cfg), store.ensure(branch_cfg)
    assert not fork_ready(branch.path, branch_cfg)
    assert execute_run(trunk, devices=1) == "done"
    assert fork_ready(branch.path, branch_cfg) and (trunk.path / "forks" / "24").is_dir()
    assert execute_run(branch, devices=1) == "done"
    return trunk_cfg, branch_cfg, store


def test_branch_from_the_trunk_equals_its_budget_from_scratch(tmp_path, uninterrupted):
    trunk_cfg, branch_cfg, store = uninterrupted
    assert fork_of(branch_cfg) == (run_id(trunk_cfg), 24)
    trunk, branch = store.run_dir(run_id(trunk_cfg)), store.run_dir(run_id(branch_cfg))
    forked = branch.metrics()
    assert forked["forked_at_step"] == 24 and forked["resumed_from_step"] == 24 and forked["steps"] == 30

    scratch_cfg = branch_cfg.replace(train={"parent": None, "fork_step": None})
    scratch = RunStore(tmp_path / "scratch").ensure(scratch_cfg)
    assert execute_run(scratch, devices=1) == "done"
    plain = scratch.metrics()
    assert "forked_at_step" not in plain and plain["resumed_from_step"] == 0
    assert forked["loss"] == plain["loss"] and forked["train_loss"] == plain["train_loss"]  # bitwise
    a, b = final_params(branch), final_params(scratch)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    # the branch's curve: the trunk's up to the fork, then its own cooldown
    curve = branch.curve()
    assert curve[-1]["step"] == 30 and curve[-1]["loss"] == plain["loss"]
    before = [r for r in curve if r["step"] <= 24]
    assert before and before == [r for r in trunk.curve() if r["step"] <= 24]
    row = store.write_results().set_index("run_id").loc[branch.run_id]
    assert row["parent"] == trunk.run_id and row["fork_step"] == 24 and row["schedule"] == "wsd"


def test_branch_without_its_fork_checkpoint_trains_from_step_0(tmp_path, tiny_dataset):
    meds, tokens = tiny_dataset
    trunk_cfg, branch_cfg = sorted(wsd_runs(meds, tokens), key=lambda r: -r["train"]["steps"])
    branch = RunStore(tmp_path).ensure(branch_cfg)  # the trunk never ran
    logs = []
    assert execute_run(branch, log=logs.append, devices=1) == "done"
    assert branch.metrics()["forked_at_step"] is None and branch.metrics()["resumed_from_step"] == 0
    assert any("training this branch from step 0" in m for m in logs)


class StopAfter:
    """Stands in for SIGTERM: asks the run to stop after `steps` more steps (it checkpoints and stops)."""

    def __init__(self, steps: int):
        self.left = steps

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left <= 0


def test_stopped_trunk_and_branch_resume_to_the_uninterrupted_result(tmp_path, uninterrupted):
    from medscale.scaling.run.train import Preempted, train_run

    trunk_cfg, branch_cfg, reference = uninterrupted
    store = RunStore(tmp_path)
    trunk, branch = store.ensure(trunk_cfg), store.ensure(branch_cfg)
    with pytest.raises(Preempted):
        train_run(trunk, preemption=StopAfter(33), devices=1)  # past the fork at 24, between checkpoints
    assert (trunk.path / "forks" / "24").is_dir() and execute_run(trunk, devices=1) == "done"
    assert trunk.metrics()["resumed_from_step"] == 33
    with pytest.raises(Preempted):
        train_run(branch, preemption=StopAfter(3), devices=1)  # forked at 24, stopped in its cooldown at 27
    assert execute_run(branch, devices=1) == "done"
    assert branch.metrics()["resumed_from_step"] == 27
    for mine in (trunk, branch):
        theirs = reference.run_dir(mine.run_id).metrics()
        assert mine.metrics()["loss"] == theirs["loss"] and mine.metrics()["train_loss"] == theirs["train_loss"]
    a, b = final_params(branch), final_params(reference.run_dir(branch.run_id))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    # a relaunch skips what is done
    assert execute_run(trunk, devices=1) == "done" and execute_run(branch, devices=1) == "done"
    assert branch.status()["attempts"] == 1 and trunk.status()["attempts"] == 1


KILL_AT = """
import os, signal, sys
from medscale.scaling.sweep.store import RunDir
from medscale.scaling.run.train import train_run

class KillAt:  # SIGKILL this process once the run has taken `left` more steps: no checkpoint, no goodbye
    left = int(sys.argv[2])

    @property
    def requested(self):
        KillAt.left -= 1
        if KillAt.left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return False

run = RunDir(sys.argv[1])
lease = run.acquire_lease()
run.set_status("running", attempts=1)
train_run(run, preemption=KillAt(), devices=1)
"""


def test_sigkilled_trunk_and_branch_resume_to_the_uninterrupted_result(tmp_path, uninterrupted):
    import signal
    import subprocess
    import sys

    trunk_cfg, branch_cfg, reference = uninterrupted
    store = RunStore(tmp_path)
    trunk, branch = store.ensure(trunk_cfg), store.ensure(branch_cfg)
    for run, steps in ((trunk, 33), (branch, 3)):  # trunk: past its fork (24) and a checkpoint (30);
        # branch: 3 steps into its cooldown (from 24), before any checkpoint of its own
        killed = subprocess.run([sys.executable, "-c", KILL_AT, str(run.path), str(steps)], capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert run.state() == "running" and run.metrics() is None
        assert execute_run(run, devices=1) == "done"
    assert trunk.metrics()["resumed_from_step"] in (20, 30)  # the newest checkpoint that was complete
    assert branch.metrics()["resumed_from_step"] == 24 and branch.metrics()["forked_at_step"] == 24
    for run in (trunk, branch):
        mine, theirs = run.metrics(), reference.run_dir(run.run_id).metrics()
        assert mine["loss"] == theirs["loss"] and mine["train_loss"] == theirs["train_loss"]
        a, b = final_params(run), final_params(reference.run_dir(run.run_id))
        assert all(a[k].tobytes() == b[k].tobytes() for k in a)
        assert run.status()["attempts"] == 2
