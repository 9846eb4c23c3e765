"""Warmup-stable-decay: the learning-rate curve, the spec keys, and the trunk/branch plan of a grid.
Cosine runs keep the run ids they always had."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_spec
from medscale.scaling.run.lr_schedule import (adamw_warmup_cosine, adamw_warmup_stable_decay, cooldown_start,
                                       warmup_stable_decay_lr, with_schedule_of)
from medscale.scaling.sweep.spec import SpecError, expand, parse_spec
from medscale.scaling.sweep.store import config_hash, run_id
from medscale.scaling.run.train import make_optimizer
from medscale.scaling.sweep.wsd import compute_comparison, fork_of, trained_steps

PEAK, END = 1e-2, 0.1


def _lr(step, shape, warmup=10, start=80, total=100):
    return float(warmup_stable_decay_lr(jnp.float32(step), PEAK, warmup, start, total, END, shape))


@pytest.mark.parametrize("shape", [0, 1])
def test_wsd_learning_rate_warms_up_holds_then_cools_down(shape):
    assert _lr(0, shape) == 0.0
    assert _lr(5, shape) == pytest.approx(PEAK * 5 / 10)
    for step in (10, 40, 79):
        assert _lr(step, shape) == np.float32(PEAK)  # exactly the peak: no dependence on the run's length
    assert _lr(80, shape) == pytest.approx(PEAK)
    assert _lr(100, shape) == pytest.approx(END * PEAK)
    p = 0.25  # step 85 of the cooldown 80..100
    left = 1 - p if shape == 0 else 1 - np.sqrt(p)
    assert _lr(85, shape) == pytest.approx(PEAK * (END + (1 - END) * left), rel=1e-6)
    lrs = [_lr(s, shape) for s in range(80, 101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_stable_phase_is_bitwise_the_same_for_any_length():
    for step in range(0, 60):
        a = warmup_stable_decay_lr(jnp.float32(step), PEAK, 10.0, 60.0, 75.0, END, 1.0)
        b = warmup_stable_decay_lr(jnp.float32(step), PEAK, 10.0, 800.0, 1000.0, END, 1.0)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_host_learning_rate_follows_the_run_config():
    train = {"lr": PEAK, "warmup_steps": 10, "min_lr_ratio": END, "schedule": "wsd", "cooldown_fraction": 0.2,
             "cooldown_shape": "1-sqrt"}
    _, lr_at = make_optimizer(train, 100)
    assert cooldown_start(100, 0.2) == 80
    assert [lr_at(s) for s in (5, 50, 79)] == pytest.approx([PEAK / 2, PEAK, PEAK])
    assert lr_at(84) == pytest.approx(_lr(84, 1), rel=1e-6)
    _, cosine = make_optimizer({"lr": PEAK, "warmup_steps": 10}, 100)
    assert cosine(50) != pytest.approx(PEAK)  # without schedule: cosine, as before


def test_wsd_does_not_change_the_compiled_program_and_schedule_swaps():
    params = {"w": jnp.ones((4, 3), jnp.float32)}
    texts, states = [], []
    for lr, total in [(1e-3, 100), (5e-3, 7000)]:
        tx = adamw_warmup_stable_decay(lr=lr, warmup_steps=5, decay_start=cooldown_start(total, 0.2),
                                       total_steps=total, cooldown_shape="1-sqrt")
        state = tx.init(params)
        states.append(state)
        texts.append(jax.jit(tx.update).lower(params, state, params).as_text())
    assert texts[0] == texts[1]
    swapped = with_schedule_of(states[1], states[0])
    assert float(swapped[-1].total) == 100 and float(swapped[-1].decay_start) == 80
    assert float(swapped[-1].peak) == pytest.approx(1e-3)
    cosine = adamw_warmup_cosine(lr=1e-3, warmup_steps=5, total_steps=100)
    assert len(jax.tree.leaves(cosine.init(params))) == len(jax.tree.leaves(states[0])) - 2


def _expand(raw):
    return expand(parse_spec(raw), token_dir="", vocab_size=64, dataset_id="d")


def _ladder(tmp_path, **kw):
    return tiny_spec(tmp_path, **{"grid.tokens": [30 * 256, 60 * 256, 120 * 256], "seeds": [0, 1], **kw})


def test_cosine_runs_keep_their_ids_and_configs(tmp_path):
    plain = _expand(_ladder(tmp_path))
    explicit = _expand(_ladder(tmp_path, **{"optimizer.schedule": "cosine", "optimizer.cooldown_fraction": 0.3,
                                            "optimizer.cooldown_shape": "1-sqrt"}))
    assert [run_id(r) for r in plain] == [run_id(r) for r in explicit]
    for r in plain:
        assert not {"schedule", "cooldown_fraction", "parent", "fork_step"} & set(r["train"])
        assert "fork_steps" not in r["checkpoint"]


def test_wsd_grid_is_one_trunk_per_family_with_branches_at_the_smaller_budgets(tmp_path):
    runs = _expand(_ladder(tmp_path, **{"optimizer.schedule": "wsd", "optimizer.cooldown_shape": "1-sqrt"}))
    assert len(runs) == 6
    cosine_ids = {run_id(r) for r in _expand(_ladder(tmp_path))}
    assert not cosine_ids & {run_id(r) for r in runs}
    for seed in (0, 1):
        family = sorted((r for r in runs if r["train"]["seed"] == seed), key=lambda r: r["train"]["steps"])
        assert [r["train"]["steps"] for r in family] == [30, 60, 120]
        trunk = family[-1]
        assert fork_of(trunk) is None and trunk["checkpoint"]["fork_steps"] == [24, 48]
        assert {r["train"]["warmup_steps"] for r in family} == {2}  # 5% of the shortest run, shared
        for branch, fork in zip(family[:2], (24, 48)):
            assert fork_of(branch) == (run_id(trunk), fork)
            assert branch["train"]["cooldown_shape"] == "1-sqrt" and branch["train"]["cooldown_fraction"] == 0.2
            assert trained_steps(branch) == branch["train"]["steps"] - fork
    # fork_steps is outside the identity: adding a budget does not rename the trunk
    (trunk,) = [r for r in runs if r["checkpoint"].get("fork_steps") and r["train"]["seed"] == 0]
    assert config_hash(trunk) == config_hash({**trunk, "checkpoint": {"every_steps": 10}})
    cmp = compute_comparison(runs)
    assert cmp["trunks"] == 2 and cmp["branches"] == 4
    assert cmp["planned_flops"] / cmp["cosine_flops"] == pytest.approx((120 + 6 + 12) / 210)


def test_isoflop_wsd_families_are_per_model(tmp_path):
    raw = tiny_spec(tmp_path, **{"grid": {"mode": "isoflop", "compute": [2e9, 4e9],
                                          "params": [{"d_model": 32, "n_layers": 2, "n_heads": 2},
                                                     {"d_model": 64, "n_layers": 2, "n_heads": 2}]},
                                 "optimizer.schedule": "wsd"})
    runs = _expand(raw)
    assert len(runs) == 4 and sum(1 for r in runs if fork_of(r)) == 2
    for r in runs:
        if fork_of(r):
            (trunk,) = [t for t in runs if run_id(t) == fork_of(r)[0]]
            assert trunk["model"] == r["model"] and trunk["budget"] > r["budget"]


@pytest.mark.parametrize("optimizer, key", [
    ({"schedule": "wsd", "cooldown_fraction": 0.97}, "optimizer.cooldown_fraction"),
    ({"schedule": "wsd", "cooldown_fraction": 0}, "optimizer.cooldown_fraction"),
    ({"schedule": "wsd", "cooldown_shape": "cosine"}, "optimizer.cooldown_shape"),
    ({"schedule": "step"}, "optimizer.schedule"),
])
def test_bad_wsd_keys_name_the_key(tmp_path, optimizer, key):
    raw = tiny_spec(tmp_path)
    raw["optimizer"].update(optimizer)
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        _expand(raw)


def test_a_grid_that_gains_budgets_adds_fork_steps_to_the_trunk_already_there(tmp_path):
    from medscale.scaling.sweep.store import RunStore

    small = _expand(tiny_spec(tmp_path, **{"grid.tokens": [60 * 256, 120 * 256], "optimizer.schedule": "wsd"}))
    large = _expand(tiny_spec(tmp_path, **{"grid.tokens": [30 * 256, 60 * 256, 120 * 256],
                                           "optimizer.schedule": "wsd"}))
    (trunk_a,) = [r for r in small if r["checkpoint"].get("fork_steps")]
    (trunk_b,) = [r for r in large if r["checkpoint"].get("fork_steps")]
    store = RunStore(tmp_path / "store")
    # the shared warmup follows the shortest run, so a family that gains a shorter budget is a new family
    assert run_id(trunk_a) != run_id(trunk_b)
    run = store.ensure(trunk_b)
    assert run.config()["checkpoint"]["fork_steps"] == [24, 48]
    fewer = {**trunk_b, "checkpoint": {**trunk_b["checkpoint"], "fork_steps": [48]}}
    store.ensure(fewer)
    assert run.config()["checkpoint"]["fork_steps"] == [24, 48]  # never dropped
    more = {**trunk_b, "checkpoint": {**trunk_b["checkpoint"], "fork_steps": [12, 48]}}
    assert store.ensure(more).path == run.path
    assert run.config()["checkpoint"]["fork_steps"] == [12, 24, 48]


def test_scheduler_starts_a_branch_once_its_fork_checkpoint_exists(tmp_path):
    from collections import deque

    from medscale.scaling.sweep.scheduler import branch_forks, next_ready, run_flops
    from medscale.scaling.sweep.store import RunStore

    runs = _expand(tiny_spec(tmp_path, **{"grid.tokens": [30 * 256, 60 * 256, 120 * 256],
                                          "optimizer.schedule": "wsd"}))
    store = RunStore(tmp_path / "store")
    dirs = {r["train"]["steps"]: store.ensure(r) for r in runs}
    trunk, b30, b60 = dirs[120], dirs[30], dirs[60]
    assert run_flops(b30) / run_flops(trunk) == pytest.approx(6 / 120)  # a branch trains only its cooldown
    queue = deque([b30, trunk, b60])
    forks = branch_forks([b30, trunk, b60])
    assert set(forks) == {b30.run_id, b60.run_id}
    assert next_ready(queue, {trunk.run_id, b30.run_id, b60.run_id}, forks) is trunk
    active = {trunk.run_id, b30.run_id, b60.run_id}  # the trunk now running
    assert next_ready(queue, active, forks) is None and list(queue) == [b30, b60]
    (trunk.path / "forks" / "48").mkdir(parents=True)  # the trunk passed step 48: b60's fork
    assert next_ready(queue, active, forks) is b60
    assert next_ready(queue, active, forks) is None
    assert next_ready(queue, {b30.run_id}, forks) is b30  # the trunk is no longer active (done or failed): go


def test_dry_run_shows_the_wsd_compute_against_cosine(tmp_path):
    from typer.testing import CliRunner

    from conftest import write_spec
    from medscale.scaling.cli import app

    raw = _ladder(tmp_path, **{"optimizer.schedule": "wsd"})
    path = write_spec(tmp_path / "wsd.yaml", raw)
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--no-memory"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "WSD plan:" in text and "2 trunk(s)" in text and "4 branch(es)" in text
    assert f"{1 - 138 / 210:.0%} less compute" in text
    assert "trains from step 0" in result.output and "@24" in result.output
    assert not (tmp_path / "o" / "runs").exists()
    plain = CliRunner().invoke(app, ["sweep", str(write_spec(tmp_path / "cos.yaml", _ladder(tmp_path))), "--out",
                                     str(tmp_path / "o"), "--dry-run", "--no-memory"], terminal_width=300)
    assert plain.exit_code == 0 and "WSD plan" not in plain.output and "forks from" not in plain.output
