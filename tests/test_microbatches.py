"""Gradient accumulation (models/step.py `microbatches`): K slices of a batch give the whole batch's
loss and update, so the global batch (a scientific choice) does not depend on device memory."""
import jax
import numpy as np
import optax
import pytest

from medscale.models.config import ModelConfig
from medscale.models.sharding import make_mesh
from medscale.models.step import check_microbatches, init_train_state, make_train_step

CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)
B, L = 8, 16


def _batch(seed):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, CFG.vocab_size, (B, L + 1)).astype(np.int32)
    # uneven weights per row: a microbatch mean of means would differ from the batch mean
    weights = (rng.random((B, L)) < np.linspace(0.2, 1.0, B)[:, None]).astype(np.float32)
    segment_ids = np.repeat(np.array([[0] * 5 + [1] * 11]), B, 0).astype(np.int32)
    return dict(inputs=toks[:, :-1], targets=toks[:, 1:], weights=weights, segment_ids=segment_ids)


def _train(microbatches, n_steps=1):
    mesh = make_mesh(data=2, devices=jax.devices()[:2])
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.01))
    graphdef, state = init_train_state(CFG, tx, mesh, seed=0)
    _train.initial_head = np.asarray(state["params"]["head_DxV"])  # the step donates the state
    step = make_train_step(graphdef, tx, mesh, microbatches=microbatches)
    metrics = []
    for i in range(n_steps):
        state, m = step(state, _batch(i))
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics


def test_four_microbatches_give_the_whole_batch_loss_and_update():
    state1, metrics1 = _train(1)
    state4, metrics4 = _train(4)
    for a, b in zip(metrics1, metrics4):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=2e-6),
                 state1["params"], state4["params"])
    # the update itself is not trivially small: parameters moved from their initial values
    assert not np.allclose(np.asarray(state4["params"]["head_DxV"]), _train.initial_head, atol=1e-4)


def test_microbatches_must_split_the_batch_over_the_devices():
    mesh = make_mesh(data=2, devices=jax.devices()[:2])
    check_microbatches(8, 4, mesh)
    with pytest.raises(ValueError, match="microbatches"):
        check_microbatches(8, 3, mesh)
    with pytest.raises(ValueError, match="data x fsdp = 2"):
        check_microbatches(8, 8, mesh)
