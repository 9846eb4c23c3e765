import subprocess
import sys

import jax
import pytest
from flax import nnx

from medscale.models.config import ModelConfig, ShapeError, param_counts, shape_for_params
from medscale.models.transformer import Transformer

CONFIGS = [
    ModelConfig(vocab_size=37, d_model=32, n_layers=1, n_heads=1, d_ff=96, max_len=16),
    ModelConfig(vocab_size=500, d_model=96, n_layers=3, n_heads=3, d_ff=256, max_len=64, causal=False),
    ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=8, d_ff=100, max_len=8),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layers}d{c.d_model}")
def test_param_counts_match_the_real_model(cfg):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))  # shapes only
    params = nnx.state(model, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    embedding = model.embed_VxD.size + model.head_DxV.size
    counts = param_counts(cfg)
    assert counts.total == total
    assert counts.non_embedding == total - embedding


def test_shape_errors_name_the_problem():
    ok = dict(vocab_size=10, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=32)
    with pytest.raises(ShapeError, match="n_heads=3 does not divide d_model=64"):
        ModelConfig(**{**ok, "n_heads": 3}).validate()
    with pytest.raises(ShapeError, match="n_layers must be >= 1, got 0"):
        ModelConfig(**{**ok, "n_layers": 0}).validate()
    with pytest.raises(ShapeError, match="d_model must be >= 1, got 0"):
        ModelConfig(**{**ok, "d_model": 0}).validate()
    with pytest.raises(ShapeError, match="vocab_size must be >= 1"):
        ModelConfig(**{**ok, "vocab_size": 0}).validate()
    with pytest.raises(ShapeError, match="head_dim .* is odd"):
        ModelConfig(**{**ok, "d_model": 60, "n_heads": 4}).validate()
    with pytest.raises(ShapeError, match="seq_len=33 is outside"):
        ModelConfig(**ok).validate(seq_len=33)
    with pytest.raises(ShapeError, match="causal must be a bool"):
        ModelConfig(**{**ok, "causal": 1}).validate()
    assert isinstance(ShapeError("x"), ValueError)
    model = nnx.eval_shape(lambda: Transformer(ModelConfig(**ok), rngs=nnx.Rngs(0)))
    with pytest.raises(ShapeError, match="seq_len=64"):
        jax.eval_shape(model, jax.ShapeDtypeStruct((1, 64), "int32"))


def test_dict_round_trip():
    cfg = CONFIGS[1]
    d = cfg.to_dict()
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict({**d, "head_dim": 32}) == cfg
    with pytest.raises(ShapeError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**d, "dropout": 0.1})


TARGETS = [2e4, 5e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9]


def test_shape_rules_hit_targets_and_are_monotone():
    shapes = [shape_for_params(t, vocab_size=2048, max_len=512) for t in TARGETS]
    ns = [param_counts(c).non_embedding for c in shapes]
    assert ns == sorted(ns) and len(set(ns)) == len(ns)
    for t, n, c in zip(TARGETS, ns, shapes):
        tol = 0.35 if t < 1e6 else 0.08 if t < 1e8 else 0.02
        assert abs(n / t - 1) <= tol, (t, n, c)
        assert c.d_model % c.n_heads == 0 and c.head_dim in (32, 64)
        assert c.d_ff % 32 == 0 and c.d_ff >= 8 * c.d_model / 3
        assert 16 <= c.d_model / c.n_layers <= 256
        if t >= 1e7:  # dense grid: the aspect rule holds closely
            assert 45 <= c.d_model / c.n_layers <= 90, c
    assert [c.n_layers for c in shapes] == sorted(c.n_layers for c in shapes)
    # a fine sweep never goes down
    fine = [param_counts(shape_for_params(1e6 * 1.1**i, vocab_size=100, max_len=64)).non_embedding
            for i in range(40)]
    assert fine == sorted(fine)


def test_shape_for_params_passes_through_vocab_len_and_objective():
    c = shape_for_params(1e6, vocab_size=123, max_len=77, causal=False)
    assert (c.vocab_size, c.max_len, c.causal) == (123, 77, False)
    with pytest.raises(ShapeError):
        shape_for_params(0, vocab_size=10, max_len=10)


def test_config_imports_without_jax():
    code = ("import sys, models.config; "
            "assert not any(m.split('.')[0] in ('jax', 'flax', 'numpy') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith(('jax', 'flax', 'numpy')))")
    subprocess.run([sys.executable, "-c", code], check=True)
