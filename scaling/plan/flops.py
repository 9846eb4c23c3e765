"""The one FLOP count of medscale, device peaks, and model FLOP utilisation (MFU).

Convention (training FLOPs per token, a multiply-add = 2 FLOPs, backward = 2 x forward):

    six_n = 6 N,  N = the parameters the run counts (medscale.models.config.counted_params:
            non-embedding by default, Kaplan et al. 2020; or total). This is the C = 6ND
            (medscale.analysis.conventions) used for IsoFLOP budgets and scaling-law fits.
    full  = 3 x forward, forward = 2 W + 2 D V + 4 n_layers (H K) ctx, where
            W      = n_layers (3 D H K + H K D + 3 D F): the weights of all matmuls in the blocks;
            2 D V  = the output head;
            4 H K ctx per layer = QK^T and AV, each 2 H K ctx, with ctx the number of keys a
                   query attends: seq_len for the encoder, (seq_len + 1) / 2 for the decoder
                   (causal halving: only the unmasked half of the score matrix is counted, so
                   an implementation that computes the whole square does work we do not count).
            The embedding lookup is a gather (0 FLOPs; its backward a scatter-add, also 0).
            Norms, softmax, RoPE, SwiGLU gating and the loss are elementwise and not counted.
    MFU = tokens/s x full / peak FLOP/s of the devices used.

Peaks: dense bf16 tensor-core/MXU peaks per JAX device from vendor datasheets; on CPU (and on
accelerators missing from the table) a matmul peak is measured once with JAX and cached in
$XDG_CACHE_HOME/medscale/device_peak.json (default ~/.cache), keyed by processor, device kind,
device count and dtype. Importing this module needs no JAX.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medscale.analysis.conventions import FLOPS_PER_PARAM_TOKEN
from medscale.atomic import write_json
from medscale.models.config import ModelConfig, counted_params
from medscale.scaling.run.processor import processor


class FlopCount(NamedTuple):
    six_n: float
    full: float


def flops_per_token(cfg: ModelConfig, seq_len: int, param_count: str | None = None) -> FlopCount:
    """Training FLOPs per token (forward + backward) at this window length; see module docstring."""
    cfg.validate(seq_len=seq_len)
    d, hk = cfg.d_model, cfg.n_heads * cfg.head_dim
    w = cfg.n_layers * (3 * d * hk + hk * d + 3 * d * cfg.d_ff)
    ctx = (seq_len + 1) / 2 if cfg.causal else seq_len
    forward = 2 * w + 2 * d * cfg.vocab_size + 4 * cfg.n_layers * hk * ctx
    return FlopCount(six_n=float(FLOPS_PER_PARAM_TOKEN * counted_params(cfg, param_count)), full=3.0 * forward)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, peak: float) -> float:
    """Model FLOP utilisation from the full count; `peak` = total FLOP/s of the devices used
    (e.g. `device_peak_flops()[0] * jax.device_count()`)."""
    return tokens_per_s * flops_per_token(cfg, seq_len).full / peak


# (substring of jax Device.device_kind, dense bf16 FLOP/s per JAX device); first match wins.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),
    ("TPU v2", 22.5e12),  # one JAX device per core, two cores per chip
    ("TPU v3", 61.5e12),  # likewise
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU7x", 2307e12),  # Ironwood
)


def _cache_file() -> Path:
    from medscale.scaling.run.runtime import user_cache_dir

    return user_cache_dir() / "device_peak.json"


def measure_matmul_peak(dtype: str = "float32", sizes: tuple[int, ...] = (512, 1024),
                        seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls run on every local device at once (total over devices)."""
    return max(_matmul_flops_per_s(dtype, size, seconds) for size in sizes)


def _matmul_flops_per_s(dtype: str, size: int, seconds: float) -> float:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.local_devices()
    mesh = jax.make_mesh((len(devices),), ("d",), devices=devices)
    sharding = NamedSharding(mesh, P("d"))
    x = jax.device_put(np.random.default_rng(0).standard_normal((len(devices), size, size), np.float32)
                       .astype(dtype), sharding)
    # a chain of matmuls per call amortises dispatch; tanh keeps values bounded
    mm = jax.jit(lambda a: jax.lax.fori_loop(0, 8, lambda _, b: jnp.tanh(b @ a), a))
    mm(x).block_until_ready()
    flops = 8 * 2.0 * len(devices) * size**3
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        mm(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return flops / best


def device_peak_flops(device: Any = None, *, refresh: bool = False) -> tuple[float, str]:
    """(peak FLOP/s of one JAX device, where the number comes from).

    Accelerators: the dense bf16 peak from `PEAK_BF16`. CPU and unknown accelerators: a float32
    (CPU) or bfloat16 matmul peak measured over all local devices, divided by their number, and
    cached. The measurement is only as quiet as the machine it ran on: `refresh=True` remeasures.
    """
    import jax

    device = device or jax.local_devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    if device.platform != "cpu":
        for pattern, peak in PEAK_BF16:
            if pattern in kind:
                return peak, f"table: {pattern} dense bf16"
    dtype = "float32" if device.platform == "cpu" else "bfloat16"
    n = jax.local_device_count()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # a CPU device's speed depends on how many cores the process may use (runs are pinned)
    key = f"{processor().model} | {device.platform} | {kind} | {n} devices | {cores} cores | {dtype}"
    path = _cache_file()
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    if refresh or key not in cache:
        total = measure_matmul_peak(dtype)
        cache[key] = {"flops_per_s_per_device": total / n, "total_flops_per_s": total,
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(path, cache)
    entry = cache[key]
    return entry["flops_per_s_per_device"], f"measured {dtype} matmul, cached {entry['measured_at']} ({key})"
