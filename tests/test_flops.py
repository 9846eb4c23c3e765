import json
import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from medscale.models.config import ModelConfig, param_counts
from medscale.models.transformer import Transformer
from medscale.scaling.plan.flops import device_peak_flops, flops_per_token, mfu

# D=64, 2 layers, H=2 x K=32, F=128, V=100
CFG = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=2, d_ff=128, max_len=32)


def test_flops_by_hand():
    # per layer: qkv 3*64*64 = 12288, out 64*64 = 4096, mlp 3*64*128 = 24576 -> 40960 weights
    # forward matmuls: 2 * 2 layers * 40960 = 163840; head 2 * 64 * 100 = 12800
    # attention at seq_len 31, causal: ctx = 16 keys on average; 4 * 2 layers * 64 * 16 = 8192
    fc = flops_per_token(CFG, 31)
    assert fc.full == 3 * (163840 + 12800 + 8192)
    # non-embedding N = 2 * (40960 + 2*64) + 64 = 82240
    assert param_counts(CFG).non_embedding == 82240
    assert fc.six_n == 6 * 82240
    # the encoder attends all 31 keys
    enc = flops_per_token(ModelConfig(**{**CFG.to_dict(), "causal": False}), 31)
    assert enc.full == 3 * (163840 + 12800 + 4 * 2 * 64 * 31)
    assert enc.six_n == fc.six_n


def test_full_count_matches_xla_for_the_encoder_forward():
    """XLA's own count of the compiled forward pass: our matmul count plus elementwise work."""
    cfg = ModelConfig(**{**CFG.to_dict(), "causal": False})
    B, L = 4, 32
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    cost = forward.lower(params, jax.ShapeDtypeStruct((B, L), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = B * L * flops_per_token(cfg, L).full / 3
    assert ours <= cost["flops"] <= 1.15 * ours


def test_mfu_arithmetic():
    full = flops_per_token(CFG, 31).full
    assert mfu(1000.0, CFG, 31, peak=full * 4000.0) == pytest.approx(0.25)


def test_peak_table_for_accelerators():
    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    assert device_peak_flops(h100)[0] == 989e12
    pcie = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 PCIe")
    assert device_peak_flops(pcie)[0] == 756e12
    v5e = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
    assert device_peak_flops(v5e) == (197e12, "table: TPU v5 lite dense bf16")
    v6e = types.SimpleNamespace(platform="tpu", device_kind="TPU v6 lite")
    assert device_peak_flops(v6e)[0] == 918e12


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSCALE_CACHE_DIR", str(tmp_path / "medscale"))
    peak, source = device_peak_flops()
    assert 1e8 < peak < 1e14 and source.startswith("measured float32 matmul")
    cache = json.loads((tmp_path / "medscale" / "device_peak.json").read_text())
    (key,) = cache
    assert f"{jax.local_device_count()} devices" in key
    assert cache[key]["total_flops_per_s"] == pytest.approx(peak * jax.local_device_count())
    # a second call reads the cache (a changed value there proves it)
    cache[key]["flops_per_s_per_device"] = 123.0
    (tmp_path / "medscale" / "device_peak.json").write_text(json.dumps(cache))
    assert device_peak_flops()[0] == 123.0
