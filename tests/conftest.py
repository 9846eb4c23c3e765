"""Test configuration: JAX sees 8 fake CPU devices so sharding code runs in CI.

The flag must be set before jax is imported anywhere, which is why it lives at the top of conftest.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import atexit
import shutil
import tempfile

from medscale.scaling.runtime import keep_freed_memory

# this process trains models too: malloc keeps freed memory for all its threads, as in medscale's own
# processes, which is only reliable before anything (numpy, polars, scipy) starts a thread pool
keep_freed_memory()

# the suite's caches (memory plans, device peaks) live for the session, not in the user's ~/.cache;
# every test and every process it starts shares them
if "MEDSCALE_CACHE_DIR" not in os.environ:
    os.environ["MEDSCALE_CACHE_DIR"] = tempfile.mkdtemp(prefix="medscale-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEDSCALE_CACHE_DIR"], True)
# runs trained in this process share compiled steps the way a sweep's worker processes do
# (scaling/runtime.py compile_cache_dir)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["MEDSCALE_CACHE_DIR"], "jax-compile-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic cohort and its tokens, shared by the tests that train."""
    from medscale.data.simulator import generate_cohort
    from medscale.data.token_store import tokenize_dataset

    base = tmp_path_factory.mktemp("tiny_dataset")
    meds = generate_cohort(base / "meds", 400, 0, workers=1)
    tokens = tokenize_dataset(meds, base / "tokens", workers=1)
    return Path(meds), Path(tokens)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray of 2 CPUs in this test process, for the module's tests (started once, shut down after)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ray
    finally:
        ray.shutdown()


def tiny_spec(meds_dir: Path, **overrides) -> dict:
    """A one-run decoder spec over `meds_dir` that trains in a few seconds on one core."""
    spec = {
        "name": "tiny",
        "objective": "decoder",
        "dataset": {"meds": str(meds_dir), "tokenizer": {"min_count": 5, "value_bins": 10}},
        "model": {"seq_len": 32},
        "grid": {"mode": "ladder", "params": [{"d_model": 32, "n_layers": 2, "n_heads": 2}], "tokens": [60 * 8 * 32]},
        "optimizer": {"batch_size": 8, "lr": 3e-3},
        "resources": {"cpus": 1},
        "eval": {"n_evals": 3, "batches": 2},
        "checkpoint": {"every_steps": 10},
    }
    for key, value in overrides.items():
        node = spec
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
