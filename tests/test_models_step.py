import functools

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from medscale.models.config import ModelConfig
from medscale.models.sharding import batch_sharding, make_mesh, shard_batch
from medscale.models.step import (abstract_train_state, init_train_state, make_eval_step,
                         make_train_step, weighted_xent)

CFG = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=16)
B, L = 8, 16


def tx():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.01))


@functools.cache
def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, CFG.vocab_size, (B, L + 1)).astype(np.int32)
    weights = (rng.random((B, L)) < 0.8).astype(np.float32)
    segment_ids = np.repeat(np.array([[0] * 6 + [1] * 10]), B, 0).astype(np.int32)
    return dict(inputs=toks[:, :-1], targets=toks[:, 1:], weights=weights, segment_ids=segment_ids)


MESHES = {"single": dict(data=1, devices=jax.devices()[:1]), "data4_fsdp2": dict(data=4, fsdp=2),
          "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}


@functools.cache
def setup(mesh_name: str):
    """(mesh, graphdef, train_step, eval_step), shared by the tests so each compiles once."""
    mesh = make_mesh(**MESHES[mesh_name])
    graphdef, _ = abstract_train_state(CFG, tx(), mesh)
    return mesh, graphdef, make_train_step(graphdef, tx(), mesh), make_eval_step(graphdef, mesh)


def run(mesh_name: str, n_steps: int = 3):
    mesh, graphdef, step, _ = setup(mesh_name)
    _, state = init_train_state(CFG, tx(), mesh, seed=0)
    losses = []
    for i in range(n_steps):
        state, metrics = step(state, make_batch(i % 2))
        losses.append(float(metrics["loss"]))
    return graphdef, state, losses


@pytest.mark.parametrize("mesh_name", ["data4_fsdp2", "data2_fsdp2_tensor2"])
def test_sharded_steps_match_single_device(mesh_name):
    assert jax.device_count() == 8
    _, state, losses = run(mesh_name)
    _, ref_state, ref_losses = run("single")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state["params"]["head_DxV"]),
                               np.asarray(ref_state["params"]["head_DxV"]), atol=1e-5)
    # parameters and Adam moments really are split
    q = state["params"]["blocks"][0]["attn"]["q_DxHxK"]
    assert q.sharding.spec[0] == "fsdp"
    assert q.addressable_shards[0].data.shape[0] == CFG.d_model // 2
    if "tensor" in mesh_name:
        assert q.addressable_shards[0].data.shape[1] == CFG.n_heads // 2
    mu = state["opt_state"][1][0].mu["blocks"][0]["attn"]["q_DxHxK"]
    assert mu.sharding == q.sharding
    assert int(state["step"]) == 3


def test_loss_falls_on_a_repeated_batch():
    mesh, _, step, _ = setup("data2_fsdp2_tensor2")
    _, state = init_train_state(CFG, tx(), mesh, seed=1)
    losses = []
    for _ in range(12):
        state, metrics = step(state, make_batch(0))
        losses.append(float(metrics["loss"]))
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert abs(losses[0] - np.log(CFG.vocab_size)) < 1.0
    assert losses[-1] < 0.6 * losses[0], losses


def test_eval_step_is_the_weighted_cross_entropy():
    mesh, _, train_step, eval_step = setup("data4_fsdp2")
    _, state = init_train_state(CFG, tx(), mesh, seed=0)
    batch = make_batch(0)
    out = eval_step(state, batch)
    assert float(out["weight_sum"]) == batch["weights"].sum()
    # unweighted positions do not count: scrambling their targets changes nothing
    scrambled = dict(batch, targets=np.where(batch["weights"] > 0, batch["targets"],
                                             (batch["targets"] + 7) % CFG.vocab_size))
    out2 = eval_step(state, scrambled)
    np.testing.assert_allclose(float(out2["loss_sum"]), float(out["loss_sum"]), rtol=1e-6)
    # and the mean loss equals the train step's loss (before its update)
    _, metrics = train_step(state, batch)
    np.testing.assert_allclose(float(out["loss_sum"] / out["weight_sum"]), float(metrics["loss"]),
                               rtol=1e-5)


def test_weighted_xent_by_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]], np.float32))
    loss_sum, weight_sum = weighted_xent(logits, np.array([[0, 1]]), np.array([[2.0, 0.5]]))
    np.testing.assert_allclose(float(loss_sum), 2 * -np.log(0.5) + 0.5 * -np.log(0.8), rtol=1e-6)
    assert float(weight_sum) == 2.5


def test_orbax_round_trip_resumes_exactly(tmp_path):
    mesh, graphdef, step, _ = setup("data2_fsdp2_tensor2")
    _, state = init_train_state(CFG, tx(), mesh, seed=0)
    state, _ = step(state, make_batch(0))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", state)
        ckpt.wait_until_finished()
        _, target = abstract_train_state(CFG, tx(), mesh)
        restored = ckpt.restore(tmp_path / "ckpt", target)
    _, expected = step(state, make_batch(1))
    restored_q = restored["params"]["blocks"][1]["attn"]["q_DxHxK"]
    assert restored_q.sharding == target["params"]["blocks"][1]["attn"]["q_DxHxK"].sharding
    assert int(restored["step"]) == 1
    # a fresh step function (as after a restart) continues exactly where the old one would
    _, resumed = make_train_step(graphdef, tx(), mesh)(restored, make_batch(1))
    assert float(resumed["loss"]) == float(expected["loss"])


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="divide the 8 devices"):
        make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="!= 8 devices"):
        make_mesh(data=2, fsdp=2)
    mesh = make_mesh(data=4, fsdp=2)
    assert mesh.shape == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ValueError, match="does not split over data x fsdp = 8"):
        shard_batch({"inputs": np.zeros((6, L), np.int32)}, mesh)
    placed = shard_batch(make_batch(0), mesh)
    assert placed["inputs"].sharding == batch_sharding(mesh)
    assert len({s.device for s in placed["inputs"].addressable_shards}) == 8


def test_data_parallel_step_has_one_collective_at_the_end():
    """The gradient is that of the weighted sum, divided by the total weight after the gradient
    all-reduce: a loss divided by the global weight first would make each device's backward pass
    wait at a collective (on CPU, holding a pool thread while the other device catches up)."""
    mesh = make_mesh(data=2, devices=jax.devices()[:2])
    graphdef, abstract = abstract_train_state(CFG, tx(), mesh)
    hlo = make_train_step(graphdef, tx(), mesh).lower(abstract, B, L).compile().as_text()
    collectives = [line for line in hlo.splitlines()
                   if any(f" {op}(" in line for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all"))]
    assert len(collectives) == 1, collectives
    assert "dot_general" in collectives[0]  # it carries the weight gradients (their op names in metadata)
