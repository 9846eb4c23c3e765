"""The optimizer: identical to optax's AdamW + warmup-cosine, but one compiled program per shape."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medscale.scaling.run.lr_schedule import adamw_warmup_cosine, warmup_cosine_lr


def test_learning_rate_matches_optax_schedule():
    ref = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 100, end_value=3e-4)
    for step in [0, 1, 5, 9, 10, 11, 50, 99, 100]:
        ours = float(warmup_cosine_lr(jnp.float32(step), 3e-3, 10.0, 100.0, 0.1))
        assert abs(ours - float(ref(step))) < 1e-8, step


def test_updates_match_optax_adamw():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20, end_value=1e-3)
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1, mask=mask))
    ours = adamw_warmup_cosine(lr=1e-2, warmup_steps=3, total_steps=20, min_lr_ratio=0.1, weight_decay=0.1)
    p_ref, p_ours = params, params
    s_ref, s_ours = ref.init(params), ours.init(params)
    for _ in range(8):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) * 3.0, params)
        u_ref, s_ref = ref.update(grads, s_ref, p_ref)
        u_ours, s_ours = ours.update(grads, s_ours, p_ours)
        p_ref, p_ours = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p_ours, u_ours)
    for k in params:
        np.testing.assert_allclose(np.asarray(p_ours[k]), np.asarray(p_ref[k]), rtol=1e-5, atol=1e-7)


def test_budget_and_learning_rate_do_not_change_the_compiled_program():
    params = {"w": jnp.ones((4, 3), jnp.float32)}
    texts = []
    for lr, total in [(1e-3, 100), (5e-3, 7000)]:
        tx = adamw_warmup_cosine(lr=lr, warmup_steps=total // 20, total_steps=total)
        state = tx.init(params)
        texts.append(jax.jit(tx.update).lower(params, state, params).as_text())
    assert texts[0] == texts[1]
