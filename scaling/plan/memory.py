"""The memory planner: per-device memory of a run's real train step, before any compute.

The step (models/step.py, with the run's options, microbatches and mesh) is compiled ahead of
time against abstract inputs (`jax.ShapeDtypeStruct`: nothing is allocated, so a 1B-parameter
model plans on a laptop) and XLA's buffer assignment reports what one device holds: the
arguments (parameters, optimizer state, step), the temporaries (gradients, activations kept for
the backward pass, scratch) and the peak. The mesh is made of fake host devices
(`--xla_force_host_platform_device_count`), in a subprocess, because the planning process may
already have JAX running with other devices; results are cached by shape, so a sweep of many
runs compiles each distinct (shape, batch, options, mesh) once. How the CPU-compiled figure
relates to GPU and TPU memory: docs/MEMORY.md.

    estimates = estimate_memory(run_configs, devices=8, backend="gpu", cache_dir="runs/.memory")
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import medscale.models
from medscale.atomic import read_json, write_json
from medscale.models.config import ModelConfig
from medscale.models.options import ModelOptions, mesh_axes
from medscale.scaling.run.run_config import RunConfig
from medscale.scaling.sweep.step_dir import identity_hash

GIB = 2**30
FORMAT = 1  # bump when what a cached figure means changes

# Device memory, GiB, of the accelerators a sweep may name in resources.accelerator
ACCELERATOR_MEMORY_GIB = {
    "h100": 80, "h100-80gb": 80, "h200": 141, "b200": 180, "a100-40gb": 40, "a100-80gb": 80, "a100": 80,
    "l4": 24, "a10g": 24, "v100": 32, "tpu-v4": 32, "tpu-v5e": 16, "tpu-v5p": 95, "tpu-v6e": 32,
}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device holds for one run's train step."""
    params: int
    opt_state: int
    temporaries: int  # gradients, activations kept for the backward pass, scratch
    peak: int

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def target_backend(resources: Any) -> str:
    """The backend a sweep's runs will train on: gpu, tpu or cpu (from resources.gpus / tpus)."""
    return "gpu" if getattr(resources, "gpus", 0) else "tpu" if getattr(resources, "tpus", 0) else "cpu"


def device_budget_gib(resources: Any) -> tuple[float | None, str]:
    """(GiB one device may use, where the figure comes from); None when nothing says."""
    if getattr(resources, "device_memory_gb", None):
        return float(resources.device_memory_gb), "resources.device_memory_gb"
    name = getattr(resources, "accelerator", None)
    if name:
        key = name.lower().replace("_", "-")
        if key not in ACCELERATOR_MEMORY_GIB:
            raise ValueError(f"resources.accelerator: {name!r} is not a known accelerator "
                             f"({', '.join(sorted(ACCELERATOR_MEMORY_GIB))}); give resources.device_memory_gb")
        return float(ACCELERATOR_MEMORY_GIB[key]), f"resources.accelerator {key}"
    return None, "no resources.device_memory_gb or resources.accelerator"


def plan_run(model: dict, batch_size: int, seq_len: int, mesh: dict | None = None, **options) -> dict:
    """The parts of a run config that its memory depends on (what plan_key reads), for planning a shape
    that is not a spec's run."""
    run: dict = {"model": model, "data": {"seq_len": seq_len, "batch_size": batch_size}}
    if options:
        run["options"] = options
    if mesh:
        run["mesh"] = mesh
    return run


def plan_key(run: RunConfig | dict, devices: int, backend: str) -> dict:
    """What a run's memory depends on: its shape, batch, options (resolved for `backend`), mesh. `run` is a
    RunConfig or a dict of its parts (plan_run)."""
    from medscale.models.attention_impl import resolve_attention

    run = run.to_dict() if isinstance(run, RunConfig) else run
    options = ModelOptions.from_dict(run.get("options"))
    L = run["data"]["seq_len"]
    dtype = options.dtype if options.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
    return {"format": FORMAT, "model": run["model"], "batch_size": run["data"]["batch_size"], "seq_len": L,
            "attention": resolve_attention(options.attention, backend, L), "remat": options.remat,
            "scan_layers": options.scan_layers, "dtype": dtype, "microbatches": options.microbatches,
            "mesh": mesh_axes(run.get("mesh"), devices)}


def compile_estimate(key: dict) -> MemoryEstimate:
    """Compile the train step `key` describes on this process's devices and read its memory."""
    import jax
    import jax.numpy as jnp

    from medscale.models.sharding import make_mesh
    from medscale.models.step import abstract_train_state, make_train_step
    from medscale.scaling.run.train import make_optimizer

    mesh_sizes = key["mesh"]
    n = mesh_sizes["data"] * mesh_sizes["fsdp"] * mesh_sizes["tensor"]
    if jax.device_count() < n:
        raise RuntimeError(f"planning a {n}-device mesh needs {n} devices, this process has {jax.device_count()}")
    mesh = make_mesh(**mesh_sizes, devices=jax.devices()[:n])
    cfg = ModelConfig.from_dict(key["model"])
    options = ModelOptions(attention=key["attention"], remat=key["remat"], scan_layers=key["scan_layers"])
    tx, _ = make_optimizer({"lr": 1e-3}, 100)  # the run's optimizer structure; its numbers do not matter
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, compute_dtype=jnp.dtype(key["dtype"]), options=options)
    step = make_train_step(graphdef, tx, mesh, microbatches=key["microbatches"])
    analysis = step.lower(abstract, key["batch_size"], key["seq_len"]).compile().memory_analysis()

    def per_device(tree) -> int:
        return sum(int(jnp.dtype(x.dtype).itemsize) * _prod(x.sharding.shard_shape(x.shape))
                   for x in jax.tree.leaves(tree))

    live = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes)
    return MemoryEstimate(params=per_device(abstract["params"]), opt_state=per_device(abstract["opt_state"]),
                          temporaries=int(analysis.temp_size_in_bytes),
                          peak=int(max(live, getattr(analysis, "peak_memory_in_bytes", 0) or 0)))


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _key_hash(key: dict) -> str:
    # the JAX version and the model code are part of the key: another XLA assigns buffers differently,
    # and a change to the model changes what its step keeps
    return identity_hash({**key, "jax": version("jax"), "model_code": _model_code_fingerprint()})


@functools.cache  # the code cannot change under a running process; a grid hashes thousands of keys
def _model_code_fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(medscale.models.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    from medscale.scaling.run.runtime import user_cache_dir

    return user_cache_dir() / "memory_plans"


def estimate_memory(runs: list[dict], *, devices: int, backend: str, cache_dir: Path | str | None = None,
                    timeout_s: float = 1800) -> list[MemoryEstimate]:
    """Per-device memory of each run (same order), compiling each distinct uncached step once,
    in one subprocess with `devices` fake host devices."""
    keys = [plan_key(r, devices, backend) for r in runs]
    hashes = [_key_hash(k) for k in keys]
    cache = Path(cache_dir) if cache_dir else None
    found: dict[str, MemoryEstimate] = {}
    for h in set(hashes):
        if cache and (hit := read_json(cache / f"{h}.json")):
            found[h] = MemoryEstimate(**hit)
    missing = {h: k for h, k in zip(hashes, keys) if h not in found}
    if missing:
        for h, est in _compile_in_subprocess(missing, devices, timeout_s).items():
            found[h] = est
            if cache:
                write_json(cache / f"{h}.json", est.to_dict())
    return [found[h] for h in hashes]


def _compile_in_subprocess(keys: dict[str, dict], devices: int, timeout_s: float) -> dict[str, MemoryEstimate]:
    env = dict(os.environ)
    # XLA's default CPU scheduler (ordered for parallelism) is kept: it plans more memory than a
    # memory-minimising order would (docs/MEMORY.md), the safe side for refusing runs
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-m", "medscale.scaling.plan.memory"], input=json.dumps(keys), env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory planning failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {h: MemoryEstimate(**v) for h, v in out.items()}


def remedies(run: RunConfig | dict) -> str:
    """What to change in the spec when a run does not fit, cheapest first."""
    options = (run.options if isinstance(run, RunConfig) else run.get("options")) or {}
    tips = []
    if options.get("attention", "auto") == "xla":
        tips.append("model.attention: flash (or auto)")
    if options.get("remat", "none") != "full":
        tips.append("model.remat: full" if options.get("remat") == "dots" else "model.remat: dots or full")
    tips.append(f"optimizer.microbatches: {2 * options.get('microbatches', 1)} or more (same global batch)")
    tips.append("resources.mesh.fsdp over more devices (parameters and optimizer state split)")
    tips.append("a smaller optimizer.batch_size (changes the experiment)")
    return "; ".join(tips)


def _main() -> None:
    keys = json.loads(sys.stdin.read())
    print(json.dumps({h: compile_estimate(k).to_dict() for h, k in keys.items()}))


if __name__ == "__main__":
    _main()
