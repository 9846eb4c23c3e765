"""Test configuration: JAX sees 8 fake CPU devices so sharding code runs in CI.

The flag must be set before jax is imported anywhere, which is why it lives at the top of conftest.
"""
import os

# the suite's shapes are tiny: XLA's CPU backend without LLVM optimisation compiles them in about half the
# time and runs them as fast (as benchmarks/bench_gpu.py's dry run does); HLO passes, sharding and buffer
# assignment (what the tests inspect) are unchanged. Processes the tests start compile the same way
# (child_env; Ray workers of an in-process Ray inherit this environment).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# one test worker per core already: an analysis's own process pool would only add start-ups (the pool is
# checked in tests/test_analysis_jobs.py, which asks for it)
os.environ.setdefault("MEDSCALE_ANALYSIS_JOBS", "1")
# the suite's local Rays keep their sessions in their own temp dir (short: Ray's socket paths have a length
# limit), and each pytest-xdist worker (`dev.py test` runs two) in its own below it, inherited by the processes
# it starts: two workers' Rays never share a session folder. (Workers inherit the controller's environment,
# where this file ran first.)
os.environ.setdefault("MEDSCALE_RAY_TMP", "/tmp/ray-tests")
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ["MEDSCALE_RAY_TMP"].endswith(
        "-" + os.environ["PYTEST_XDIST_WORKER"]):
    os.environ["MEDSCALE_RAY_TMP"] += "-" + os.environ["PYTEST_XDIST_WORKER"]

import atexit
import shutil
import tempfile

from medscale.scaling.run.runtime import keep_freed_memory

# this process trains models too: malloc keeps freed memory for all its threads, as in medscale's own
# processes, which is only reliable before anything (numpy, polars, scipy) starts a thread pool
keep_freed_memory()

# the suite's caches (memory plans, device peaks) live for the session, not in the user's ~/.cache;
# every test and every process it starts shares them
if "MEDSCALE_CACHE_DIR" not in os.environ:
    os.environ["MEDSCALE_CACHE_DIR"] = tempfile.mkdtemp(prefix="medscale-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEDSCALE_CACHE_DIR"], True)
# runs trained in this process share compiled steps the way a sweep's worker processes do
# (scaling/run/runtime.py compile_cache_dir)
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


# the report's figures that tests/test_analysis_report.py::test_report_is_complete draws and checks (files
# referenced, not blank); tests about a report's numbers and text stub them (plot_saturation stays real)
STUBBED_FIGURES = ("plot_isoflop", "plot_frontier", "plot_allocation", "plot_contours", "plot_residuals")


def stub_figures(monkeypatch) -> None:
    """The report's figures as empty files at the paths the report gives them (figures cost seconds each)."""
    from medscale.analysis import report

    def stub(fit, out, *args, **kwargs):
        path = Path(out).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return [path]

    for name in STUBBED_FIGURES:
        monkeypatch.setattr(report.plots, name, stub)
    monkeypatch.setattr(report.family_plots, "plot_families", stub)


@pytest.fixture
def fast_figures(monkeypatch):
    """For tests about a report's numbers and text: its figures as empty files (stub_figures)."""
    stub_figures(monkeypatch)


@pytest.fixture
def reuse_fits(monkeypatch):
    """Within one test, `fit_table` and `fit_families` called again on the same table with the same options
    return the first call's result instead of fitting again (both are deterministic: seeded, one job). For
    tests that run one `medscale fit` twice to check two renderings (--json and text) of one fit; a test
    that compares two independent fits must not use it. Yields {"calls": how many calls were reused}."""
    import hashlib
    import pickle

    import medscale.analysis as analysis
    import medscale.scaling.cli as cli

    reused = {"calls": 0}

    def memo(fn):
        seen = {}

        def wrapper(*args, **kwargs):
            try:
                key = hashlib.sha256(pickle.dumps((args, sorted(kwargs.items())))).hexdigest()
            except Exception:  # noqa: BLE001 - an unpicklable argument: fit as usual
                return fn(*args, **kwargs)
            if key in seen:
                reused["calls"] += 1
                return seen[key]
            seen[key] = fn(*args, **kwargs)
            return seen[key]
        return wrapper

    for name in ("fit_table", "fit_families"):
        wrapped = memo(getattr(analysis, name))
        monkeypatch.setattr(analysis, name, wrapped)
        monkeypatch.setattr(cli, name, wrapped, raising=False)  # should the CLI import it at module level
    yield reused


# ---- the processes a test's driver started (its Ray included), found without touching anyone else's ----------
RAY_MARK = "MEDSCALE_TEST_RAY_MARK"


def child_env() -> dict:
    """The environment for a process a test starts (a `medscale` command, a gang's process): this one's, without
    the suite's 8 host devices (a run sets its own count), compiling as the suite does (FAST_COMPILE)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = FAST_COMPILE
    return env


def marked_env(ray_tmp: str) -> tuple[dict, str]:
    """An environment for a driver subprocess: child_env's, Ray's temp dir `ray_tmp` (short: socket paths have a
    length limit) and a unique mark that every process it starts inherits. Returns (env, mark)."""
    import uuid

    mark = uuid.uuid4().hex
    env = child_env()
    env.update({"MEDSCALE_RAY_TMP": ray_tmp, RAY_MARK: mark})
    return env, mark


def started_by(mark: str, ray_tmp: str, known=()) -> list[str]:
    """Live processes (not zombies) that the driver started: `known` (its descendants, taken while it ran) and any
    process carrying the mark in its environment, or the Ray temp dir on its command line or in its open files
    (Ray's retitled processes, "ray::DashboardAgent", may have their environment overwritten by their title).
    Nothing else: other tests' and other users' processes on the machine are never matched."""
    import psutil

    found = {}
    for proc in list(known) + list(psutil.process_iter()):
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            cmd = " ".join(proc.cmdline())
            if (proc in known or ray_tmp in cmd or proc.environ().get(RAY_MARK) == mark
                    or any(f.path.startswith(ray_tmp) for f in proc.open_files())):
                found[proc.pid] = f"{proc.pid} {cmd[:100]} (parent {proc.ppid()})"
        except psutil.Error:
            continue
    return sorted(found.values())
