"""The first runs on an accelerator: one prepared check of medscale on a GPU.

    python benchmarks/bench_gpu.py              # on the GPU machine: under 8 minutes on one H100
    python benchmarks/bench_gpu.py --dry-run    # the same code path on CPU with tiny shapes (CI runs it)

It writes `benchmarks/results/gpu-<device kind>.md` (the kind from jax.devices()[0].device_kind), and
rewrites it after every section, so a run stopped from outside keeps what it measured. Sections, in
order, each with a time cap; the whole run ends by --budget-s (465 s), and a section or row that
cannot start in what is left is skipped and listed as skipped in the file:

  throughput  train step (models/step.py, AdamW as runs make it) tokens/s and MFU for decoders of
              about 100M, 400M and 1B non-embedding parameters at batch 32, 32, 16 x 1,024: attention
              auto (cuDNN's fused kernel on GPU) against the blocked fallback (models/flash_attention.py,
              what runs when cuDNN refuses a call), remat none and full. MFU is scaling/plan/flops.py's full
              FLOP count against the device's dense bf16 peak (scaling/plan/flops.py PEAK_BF16), n/a for a
              device kind not in that table. Each row is one fresh process, timed in rounds as in
              bench_train_throughput.py; the auto rows of every size come before the blocked ones, so a
              short budget loses the kernel comparison at the largest sizes first.
  memory      each throughput row's measured peak (the device allocator's peak in the row's process;
              in a dry run, resident memory) against the planner's figure for the same run
              (scaling/plan/memory.py plan_run + estimate_memory, compiled on this machine's CPU in the
              background while the device measures).
  sweep       a 2-run decoder sweep (one size, two seeds) through Ray on the device (scaling/pipeline.py,
              one GPU per run, so each run gets a fresh worker): one worker is SIGKILLed after its run's first checkpoint,
              Ray retries the run and it resumes from that checkpoint.
  torch       the smallest size in PyTorch (bench_train_throughput.py's peer model, moved to CUDA, bf16
              autocast), eager then torch.compile, when torch is installed and time is left.

A dry run (`--dry-run`) takes the same path on CPU (JAX_PLATFORMS=cpu) with a ~100k-parameter decoder
at batch 2 x 64, a local Ray told it has 2 GPUs (logical ones: the runs' workers take the scheduler's GPU
path, a fresh worker per run, and train on CPU), its temporary folders under one temp folder, and
writes to a temp path unless --out is given. Every figure it writes is labelled a CPU dry run.
Without an accelerator and without --dry-run it measures nothing, writes nothing and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_train_throughput (make_batch, the PyTorch peer and its worker loop),
# imported where needed, as is scaling/plan/flops.py: it brings scipy and pandas, which the probe does without

from medscale.models.config import param_counts, shape_for_params  # noqa: E402  (no JAX)

GIB = 2**30
RESULTS = HERE / "results"
# (budget of the whole run, {section: (cap, the least it needs to start)}) in seconds
TIMES = {"gpu": (465, {"throughput": (270, 30), "sweep": (110, 45), "torch": (55, 20)}),
         "dry": (420, {"throughput": (180, 5), "sweep": (180, 15), "torch": (50, 5)})}  # generous: a loaded CI
DRY = "CPU dry run"


# --------------------------------------------------------------------------------------------- set-up
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the path, measures nothing real")
    p.add_argument("--out", type=Path, help="results file (default benchmarks/results/gpu-<device>.md; "
                                             "a dry run: a temp path)")
    p.add_argument("--budget-s", type=float, help="the whole run's time (default 465; dry run 420)")
    p.add_argument("--sizes", help="non-embedding parameter targets (default 1e8,4e8,1e9; dry run 1e5)")
    p.add_argument("--batch", help="batch per size (default 32,32,16; dry run 2)")
    p.add_argument("--seq-len", type=int, help="default 1024; dry run 64")
    p.add_argument("--vocab", type=int, help="default 4096 (scaling/pipeline.py DRY_RUN_VOCAB); dry run 256")
    p.add_argument("--rounds", type=int, help="timed rounds per row (default 3; dry run 2)")
    p.add_argument("--steps", type=int, help="steps per round (default 5; dry run 2)")
    p.add_argument("--keep-work", action="store_true", help="keep the temp folder (sweep store, logs)")
    p.add_argument("--worker", choices=["probe", "jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = dict(budget_s=TIMES["dry" if dry else "gpu"][0], sizes="1e5" if dry else "1e8,4e8,1e9",
                    batch="2" if dry else "32,32,16", seq_len=64 if dry else 1024, vocab=256 if dry else 4096,
                    rounds=2 if dry else 3, steps=2 if dry else 5)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


DRY_XLA_FLAGS = ["--xla_backend_optimization_level=0"]  # half the CPU compile time; tiny shapes run as fast


def prepare_environment(dry_run: bool) -> None:
    """Before any child starts: one XLA CPU device per process (a caller's forced host-device count,
    e.g. the test suite's 8, would split the dry run's batch); in a dry run, CPU only, and XLA's CPU
    backend without LLVM optimisation: about ten small steps are compiled, which is most of its time."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + (DRY_XLA_FLAGS if dry_run else []))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"


def bf16_peak(kind: str, platform: str) -> float | None:
    """Dense bf16 FLOP/s of one device of this kind, from scaling/plan/flops.py PEAK_BF16 (NVIDIA's datasheets:
    H100 SXM 989, H100 PCIe 756, H200 989, A100 312 TFLOP/s; first matching substring wins). None on CPU
    and for a kind not in the table: MFU is then n/a, never a guess."""
    from medscale.scaling.plan.flops import PEAK_BF16

    if platform == "cpu":
        return None
    return next((peak for pattern, peak in PEAK_BF16 if pattern in kind), None)


def size_name(size: float) -> str:
    return next(f"{size / unit:g}{name}" for unit, name in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, ""))
                if size >= unit or unit == 1)


def slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


class Budget:
    """The whole run's deadline; each section gets its cap or what is left, whichever ends first.
    `log` says how each section ended (ran, skipped, failed), for the results file."""

    def __init__(self, total_s: float):
        self.total_s, self.end = total_s, time.monotonic() + total_s
        self.log: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def section(self, name: str, cap_s: float, least_s: float) -> float | None:
        """The section's deadline (time.monotonic), or None, logged as skipped, when less than least_s is left."""
        left = self.left()
        if left < least_s:
            self.log.append(f"{name}: skipped, {max(left, 0):.0f} s of the {self.total_s:.0f} s budget left "
                            f"(it needs at least {least_s:.0f} s)")
            return None
        return time.monotonic() + min(cap_s, left)


# --------------------------------------------------------------------------------------------- workers
def probe_worker() -> None:
    from medscale.scaling.run.runtime import configure_process

    configure_process(host_devices=1, compile_cache=False)
    import jax

    device = jax.local_devices()[0]
    print(json.dumps({"platform": device.platform, "kind": device.device_kind, "count": jax.local_device_count(),
                      "jax": jax.__version__, "limit_bytes": (device.memory_stats() or {}).get("bytes_limit")}))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The most memory a train step held: the device allocator's peak (GPU, TPU; it also holds any larger
    scratch of the compiler's autotuning) or, on CPU, resident memory sampled every 2 ms above
    what the process held before the state was made (it also holds the compiler's memory)."""

    def __init__(self, device):
        self.device, self.base, self.peak = device, 0, 0
        self.on_device = bool(device.memory_stats())
        self.how = ("allocator peak (peak_bytes_in_use)" if self.on_device
                    else "resident memory, sampled (CPU; the compiler's too)")
        if not self.on_device:
            self.base = self.peak = _rss()
            self.done = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, _rss())

    def result(self) -> dict:
        if self.on_device:
            stats = self.device.memory_stats()
            return {"peak_bytes": stats["peak_bytes_in_use"], "limit_bytes": stats.get("bytes_limit"), "how": self.how}
        self.done.set()
        return {"peak_bytes": self.peak - self.base, "limit_bytes": None, "how": self.how}


def route_attention(mode: str, backend: str) -> list[str]:
    """Record which kernel the model's flash attention runs (models/attention_impl.py picks it at trace
    time, and warns when it falls back); mode "blocked" sends every call to the fallback itself,
    models/flash_attention.py. Returns the list the traced calls append to."""
    from medscale.models import transformer
    from medscale.models.flash_attention import flash_attention

    ran: list[str] = []
    chosen = transformer.memory_efficient_attention

    def attention(q, k, v, *, causal, segment_ids_BxL=None):
        if mode == "blocked":
            ran.append("blocked")
            return flash_attention(q, k, v, causal=causal, segment_ids_BxL=segment_ids_BxL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = chosen(q, k, v, causal=causal, segment_ids_BxL=segment_ids_BxL)
        fell_back = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        ran.append(f"blocked: {fell_back[0]}" if fell_back else {"gpu": "cudnn", "tpu": "pallas"}.get(backend, "blocked"))
        return out

    transformer.memory_efficient_attention = attention
    return ran


def jax_worker(row: dict) -> None:
    """One throughput row: build, compile and warm up the step, say "ready", then time `n` steps per
    line "n" read from stdin (bench_train_throughput.py's protocol); at the end of stdin, the peak memory."""
    import bench_train_throughput as btt

    from medscale.scaling.run.runtime import configure_process

    configure_process(host_devices=1)  # malloc as runs have it, the compile cache; one CPU device in a dry run
    import jax

    from medscale.models.attention_impl import resolve_attention
    from medscale.models.options import ModelOptions
    from medscale.models.sharding import make_mesh, shard_batch
    from medscale.models.step import init_train_state, make_train_step
    from medscale.scaling.run.train import make_optimizer

    backend = jax.default_backend()
    B, L = row["batch"], row["seq_len"]
    cfg = shape_for_params(row["size"], vocab_size=row["vocab"], max_len=L)
    options = ModelOptions(**row["options"])
    kernel = resolve_attention(options.attention, backend, L)
    ran = route_attention(row["attention"], backend)
    memory = PeakMemory(jax.local_devices()[0])
    tx, _ = make_optimizer({"lr": 1e-3}, 100)  # the runs' AdamW with clipping, as the planner compiles it
    mesh = make_mesh(devices=jax.local_devices()[:1])
    t = time.perf_counter()
    graphdef, state = init_train_state(cfg, tx, mesh, options=options)
    step = make_train_step(graphdef, tx, mesh)
    batch = shard_batch(btt.make_batch(cfg, B, L), mesh)  # placed once, as a prefetching loader would
    state, metrics = step(state, batch)
    float(metrics["loss"])
    first_s = time.perf_counter() - t
    state, metrics = step(state, batch)
    float(metrics["loss"])
    ran_as = sorted(set(ran)) or [f"{kernel} (models/attention_block.py)" if kernel == "xla" else kernel]
    print(json.dumps({"kernel": ", ".join(ran_as), "dtype": str(options.compute_dtype(backend)),
                      "scan_layers": options.remat != "none" or options.scan_layers, "first_step_s": first_s,
                      "backend": backend}))
    print("ready", flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        for _ in range(int(line)):
            state, metrics = step(state, batch)
        loss = float(metrics["loss"])
        print(time.perf_counter() - t, loss, flush=True)
    print(json.dumps(memory.result()), flush=True)


def torch_worker(row: dict) -> None:
    """bench_train_throughput.py's PyTorch worker, on CUDA where there is one: its model, initialisation,
    batch, loss and AdamW are built on the default device, its CPU autocast becomes CUDA's."""
    import bench_train_throughput as btt
    import torch

    if torch.cuda.is_available():
        torch.set_default_device("cuda")
        from_numpy, autocast = torch.from_numpy, torch.autocast
        torch.from_numpy = lambda a: from_numpy(a).to("cuda")
        torch.autocast = lambda device_type, **kw: autocast("cuda", **kw)
    btt.worker(argparse.Namespace(size=row["size"], vocab=row["vocab"], seq_len=row["seq_len"], batch=row["batch"],
                                  worker=row["framework"], dtype=row["dtype"]))


# --------------------------------------------------------------------------------------------- driving
def drive(worker: str, row: dict, rounds: int, steps: int, deadline: float, log: Path) -> dict:
    """Run one worker process: read its info up to "ready", time `rounds` x `steps`, read its last info.
    Killed at `deadline` (time.monotonic); the status says how it ended."""
    from medscale.scaling.run.runtime import malloc_env

    cmd = [sys.executable, str(Path(__file__).resolve()), f"--worker={worker}", f"--row={json.dumps(row)}"]
    started = time.monotonic()
    with open(log, "w") as err:  # malloc set up at the worker's start, as medscale's run processes have it
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, **malloc_env()})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: ([lines.put(x.strip()) for x in proc.stdout], lines.put(None)), daemon=True).start()
    out: dict = {"times": [], "status": "ok"}

    def read(info: bool) -> str | None:
        """The next line (None: the worker's output ended); JSON lines go into `out` when `info`."""
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError from None
            if not (info and line and line.startswith("{")):
                return line
            out.update(json.loads(line))

    try:
        ready = read(info=True) == "ready"
        for _ in range(rounds if ready else 0):
            proc.stdin.write(f"{steps}\n")
            proc.stdin.flush()
            if (line := read(info=False)) is None:
                break
            seconds, loss = line.split()
            out["times"].append(float(seconds) / steps)
            out["loss"] = float(loss)
        proc.stdin.close()
        while read(info=True) is not None:
            pass
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        proc.kill()
        out["status"] = f"stopped at the section's time cap after {time.monotonic() - started:.0f} s"
    except BrokenPipeError:  # it died; its exit status and log say why
        pass
    proc.wait()
    if proc.returncode and out["status"] == "ok":
        text = log.read_text()
        last = ([x for x in text.splitlines() if x.strip()] or [""])[-1][-300:]
        oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
        out["status"] = f"{'out of memory' if oom else 'failed'} (exit {proc.returncode}): {last}"
    out["wall_s"] = time.monotonic() - started
    return out


class Planner:
    """The planner's per-device peak for each row's run (scaling/plan/memory.py), compiled on this machine's
    CPU in the background: the distinct plans in groups, one subprocess a group, as many groups as spare
    cores allow. Sets each row's "plan" key (rows whose runs plan alike, e.g. both attention rows on GPU,
    where auto resolves to the flash path the planner compiles, share it)."""

    def __init__(self, rows: list[dict], backend: str, budget: Budget):
        from medscale.scaling.plan.memory import default_cache_dir, estimate_memory, plan_key, plan_run

        runs = {}
        for row in rows:
            cfg = shape_for_params(row["size"], vocab_size=row["vocab"], max_len=row["seq_len"])
            run = plan_run(cfg.to_dict(), row["batch"], row["seq_len"], **row["options"])
            row["plan"] = json.dumps(plan_key(run, 1, backend), sort_keys=True)
            runs.setdefault(row["plan"], run)
        keys = list(runs)  # smallest first: in a group, a slow large plan does not hold back the small ones
        groups = max(1, min(len(keys), ((os.cpu_count() or 2) - 4) // 2))  # cores left for the device's worker
        self.pool = ThreadPoolExecutor(groups)
        self.futures, self.closed = {}, False
        for g in range(groups):
            mine = keys[g::groups]
            future = self.pool.submit(estimate_memory, [runs[k] for k in mine], devices=1, backend=backend,
                                      cache_dir=default_cache_dir(), timeout_s=max(1.0, budget.left() - 5))
            self.futures.update({k: (future, i) for i, k in enumerate(mine)})

    def wait(self, seconds: float) -> None:
        """Wait for the plans still compiling, up to `seconds`; after that a plan not made is said to be late."""
        from concurrent.futures import wait

        wait([f for f, _ in self.futures.values()], timeout=max(0.0, seconds))
        self.pool.shutdown(wait=False, cancel_futures=True)  # what still runs ends by its own timeout
        self.closed = True

    def result(self, key: str) -> tuple[float | None, str]:
        """(planned peak bytes, or None and why), without waiting."""
        future, i = self.futures[key]
        if not future.done():
            return None, "not planned within the time budget" if self.closed else "still planning"
        try:
            return future.result()[i].peak, ""
        except subprocess.TimeoutExpired:
            return None, "not planned within the time budget"
        except Exception as err:  # noqa: BLE001 - said in the row
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            return None, f"planner failed: {last[:200]}"


def throughput_rows(args) -> list[dict]:
    """Auto attention for every size first (the headline MFU and what remat costs), then the blocked
    fallback, so a short budget loses the kernel comparison at the largest sizes first."""
    sizes = [float(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    batches += batches[-1:] * (len(sizes) - len(batches))
    rows = []
    for attention in ("auto", "blocked"):
        for size, B in zip(sizes, batches):
            for remat in ("none", "full"):
                options = {"attention": "auto" if attention == "auto" else "flash", "remat": remat}
                rows.append({"size": size, "batch": B, "seq_len": args.seq_len, "vocab": args.vocab,
                             "attention": attention, "remat": remat, "options": options})
    return rows


def section_throughput(args, rows: list[dict], deadline: float, work: Path, dry: bool, report) -> None:
    took: dict[float, float] = {}
    for i, row in enumerate(rows):
        need = took.get(row["size"], 3.0 if dry else 15 + 40 * row["size"] / 1e9)
        left = deadline - time.monotonic()
        if left < need:
            row["result"] = {"status": f"not started: {left:.0f} s of the section's cap left, a row of this size "
                                       f"needs about {need:.0f} s", "times": []}
        else:
            row["result"] = drive("jax", {k: row[k] for k in ("size", "batch", "seq_len", "vocab", "attention",
                                                              "options")},
                                  args.rounds, args.steps, deadline, work / f"row{i}.log")
            took[row["size"]] = max(took.get(row["size"], 0.0), row["result"]["wall_s"])
        print(f"  {size_name(row['size'])} attention {row['attention']:7s} remat {row['remat']:4s}: "
              f"{tokens_per_s(row)[0] or 0:12,.0f} tok/s  {row['result']['status']}", flush=True)
        report.write()


def tokens_per_s(row: dict) -> tuple[float | None, float | None]:
    times = sorted(row.get("result", {}).get("times") or [])
    if not times:
        return None, None
    tokens = row["batch"] * row["seq_len"]
    return tokens / times[len(times) // 2], tokens / times[0]


# --------------------------------------------------------------------------------------------- sweep
def sweep_spec(dry: bool) -> dict:
    """One small decoder, two seeds (a later run, and a resumed one, load the first's compiled step from
    the compile cache), one GPU each; long enough after the first checkpoint that the kill lands mid-run."""
    seq, batch, steps, every = (32, 8, 80, 40) if dry else (128, 16, 240, 20)  # few checkpoints: they cost
    return {"name": "gpu-check", "objective": "decoder",
            "dataset": {"simulator": {"subjects": 200 if dry else 400, "seed": 0},
                        "tokenizer": {"min_count": 5, "value_bins": 10}},
            "model": {"seq_len": seq},
            "grid": {"mode": "ladder", "params": [{"d_model": 32 if dry else 96, "n_layers": 2, "n_heads": 2}],
                     "tokens": [steps * batch * seq]},
            "seeds": [0, 1],
            "optimizer": {"batch_size": batch, "lr": 3e-3},
            "resources": {"cpus": 1 if dry else 2, "gpus": 1},
            "eval": {"n_evals": 1, "batches": 1},
            "checkpoint": {"every_steps": every}}


class Killer(threading.Thread):
    """SIGKILLs the worker of the first run seen training with a checkpoint on disk, once."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.stop, self.killed = out, threading.Event(), None

    def run(self) -> None:
        from medscale.scaling.sweep.store import RunStore

        while not self.stop.wait(0.05):
            if not (self.out / "runs").is_dir():
                continue
            for run in RunStore(self.out).runs():
                info = run.lease_info()
                ckpts = [p for p in run.ckpt_dir.iterdir() if p.name.isdigit()] if run.ckpt_dir.is_dir() else []
                if info and info.get("pid") and ckpts and run.state() == "running":
                    try:
                        os.kill(int(info["pid"]), signal.SIGKILL)
                    except ProcessLookupError:
                        continue  # it just finished
                    self.killed = {"run": run.run_id, "pid": int(info["pid"]),
                                   "checkpoint": max(int(p.name) for p in ckpts)}
                    return


def section_sweep(deadline: float, work: Path, dry: bool, gpus: int) -> dict:
    import ray
    import yaml

    from medscale.scaling import pipeline
    from medscale.scaling.run.runtime import malloc_env
    from medscale.scaling.sweep.scheduler import keeping_signal_handlers
    from medscale.scaling.sweep.store import RunStore

    spec_path, out = work / "sweep.yaml", work / "sweep"
    spec_path.write_text(yaml.safe_dump(sweep_spec(dry), sort_keys=False))
    os.environ.update(malloc_env())  # as scheduler.start_ray: local Ray processes inherit it
    result: dict = {"ray_gpus": gpus, "spec": sweep_spec(dry)}
    started = time.monotonic()
    with keeping_signal_handlers():
        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _temp_dir=str(work / "ray"))
    killer = Killer(out)

    def sweep() -> None:
        try:
            spec, prepared = pipeline.load_spec_and_data(spec_path, out)
            killer.start()
            pipeline.launch_sweep(spec, pipeline.expand_over(spec, prepared, spec_path), out)
        except BaseException as err:  # noqa: BLE001 - said in the section
            result["error"] = f"{type(err).__name__}: {err}"[:1000]

    try:
        thread = threading.Thread(target=sweep, daemon=True)
        thread.start()
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            result["error"] = f"stopped at the section's time cap after {time.monotonic() - started:.0f} s"
    finally:
        killer.stop.set()
        ray.shutdown()
    result["wall_s"] = time.monotonic() - started
    result["killed"] = killer.killed
    result["runs"] = []
    for run in RunStore(out).runs() if (out / "runs").is_dir() else []:
        status, metrics = run.status(), run.metrics() or {}
        config = run.config()
        result["runs"].append({"run": run.run_id, "seed": config["train"]["seed"],
                               "shape": "{d_model} x {n_layers}".format(**config["model"]),
                               "state": status["state"], "attempts": status.get("attempts"), "pid": status.get("pid"),
                               "resumed_from_step": metrics.get("resumed_from_step"), "backend": metrics.get("backend"),
                               "loss": metrics.get("loss"), "tokens_per_sec": metrics.get("tokens_per_sec")})
    runs, killed = result["runs"], killer.killed
    pids = [r["pid"] for r in runs] + ([killed["pid"]] if killed else [])
    resumed = [r for r in runs if killed and r["run"] == killed["run"]]
    result["checks"] = {
        "2 runs done": len(runs) == 2 and all(r["state"] == "done" for r in runs),
        "each attempt in a worker process of its own": len(pids) == len(set(pids)) == len(runs) + bool(killed),
        "a worker killed after a checkpoint": killed is not None,
        "the killed run resumed from its checkpoint": bool(resumed) and resumed[0]["attempts"] == 2
        and (resumed[0]["resumed_from_step"] or 0) >= killed["checkpoint"] > 0,
    }
    return result


# --------------------------------------------------------------------------------------------- torch
def section_torch(args, rows: list[dict], deadline: float, work: Path, on_gpu: bool) -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return [{"status": "skipped: torch is not installed here (pip install -r requirements-bench.txt)"}]
    base = rows[0]
    out = []
    for framework in ("torch", "torch.compile"):
        row = {"size": base["size"], "batch": base["batch"], "seq_len": base["seq_len"], "vocab": base["vocab"],
               "framework": framework, "dtype": "bfloat16" if on_gpu else "float32"}
        row["result"] = drive("torch", row, args.rounds, args.steps, deadline, work / f"{framework}.log")
        out.append(row)
        print(f"  {framework}: {tokens_per_s(row)[0] or 0:,.0f} tok/s  {row['result']['status']}", flush=True)
        if time.monotonic() > deadline - 5:
            break
    return out


# --------------------------------------------------------------------------------------------- report
def _fmt(x, spec: str = ",.0f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


class Report:
    def __init__(self, args, device: dict, out: Path, budget: Budget):
        self.args, self.device, self.out, self.budget = args, device, out, budget
        self.dry = args.dry_run
        self.label = DRY if self.dry else device["kind"]
        self.peak = bf16_peak(device["kind"], device["platform"])
        self.rows: list[dict] = []
        self.planner: Planner | None = None
        self.sweep: dict | None = None
        self.torch: list[dict] | None = None
        self.started = time.strftime("%Y-%m-%d %H:%M %Z")

    def mfu(self, row: dict, tps: float | None) -> str:
        from medscale.scaling.plan.flops import mfu

        if tps is None or self.peak is None:
            return "n/a"
        cfg = shape_for_params(row["size"], vocab_size=row["vocab"], max_len=row["seq_len"])
        return f"{mfu(tps, cfg, row['seq_len'], self.peak):.1%}"

    def header(self) -> list[str]:
        d, a = self.device, self.args
        title = f"# GPU check: {d['kind']}" + (" (CPU DRY RUN)" if self.dry else "")
        lines = [title, "", f"measured {self.started}; command: "
                 f"`{Path(sys.executable).name} benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}`", "",
                 f"device: {d['kind']} ({d['platform']}, {d['count']} device(s), allocator limit "
                 f"{_fmt(d.get('limit_bytes') and d['limit_bytes'] / GIB, '.1f')} GiB); jax {d['jax']}; "
                 f"dense bf16 peak {_fmt(self.peak and self.peak / 1e12, '.0f')} TFLOP/s "
                 f"({'scaling/plan/flops.py PEAK_BF16' if self.peak else 'not in scaling/plan/flops.py PEAK_BF16: MFU n/a'}); "
                 f"budget {self.budget.total_s:.0f} s (section caps: "
                 f"{', '.join(f'{k} {v[0]} s' for k, v in TIMES['dry' if self.dry else 'gpu'][1].items())}); decoders at {a.seq_len:,} events, vocabulary {a.vocab:,}, "
                 f"{a.rounds} rounds x {a.steps} steps timed per row after 2 warm-up steps"]
        if self.dry:
            lines += ["", f"**{DRY}: every figure below was measured on CPU with tiny shapes to exercise this script "
                          f"(XLA_FLAGS {' '.join(DRY_XLA_FLAGS)}). None of them is a GPU figure.**"]
        return lines

    def throughput(self) -> list[str]:
        lines = ["", f"## Throughput: train step tokens/s and MFU{' (' + DRY + ')' if self.dry else ''}", "",
                 "| measured on | size | shape (d x layers, heads) | params non-emb / total | batch x len | dtype "
                 "| attention: asked -> ran | remat (layers scanned) | steps timed | tok/s median | tok/s best "
                 "| step ms | MFU median | init + compile + 1st step s | loss | status |",
                 "|---|---:|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in self.rows:
            r = row.get("result") or {"status": "not run", "times": []}
            cfg = shape_for_params(row["size"], vocab_size=row["vocab"], max_len=row["seq_len"])
            n = param_counts(cfg)
            med, best = tokens_per_s(row)
            lines.append(
                f"| {self.label} | {size_name(row['size'])} | {cfg.d_model} x {cfg.n_layers}, {cfg.n_heads} "
                f"| {n.non_embedding:,} / {n.total:,} | {row['batch']} x {row['seq_len']} | {r.get('dtype', '')} "
                f"| {row['attention']} -> {r.get('kernel', '')} | {row['remat']} ({'yes' if r.get('scan_layers') else 'no'}) "
                f"| {len(r['times']) * self.args.steps} | {_fmt(med)} | {_fmt(best)} "
                f"| {_fmt(r['times'] and 1e3 * sorted(r['times'])[len(r['times']) // 2] or None, '.1f')} "
                f"| {self.mfu(row, med)} | {_fmt(r.get('first_step_s'), '.1f')} | {_fmt(r.get('loss'), '.4f')} "
                f"| {r['status']} |")
        lines += ["", "attention auto on GPU is cuDNN's fused kernel (`jax.nn.dot_product_attention`, with the packed "
                      "subjects' mask); blocked is models/flash_attention.py, the kernel auto falls back to (a row "
                      "that fell back says so). On CPU, auto below 2,048 events is the plain path "
                      "(models/attention_block.py). MFU: scaling/plan/flops.py's full count (attention with causal "
                      "halving, output head) over the dense bf16 peak; remat's recomputation is not counted."]
        return lines

    def memory(self) -> list[str]:
        lines = ["", f"## Memory: planned (scaling/plan/memory.py) against measured{' (' + DRY + ')' if self.dry else ''}",
                 "", "| measured on | size | batch x len | attention | remat | planned peak GiB | measured peak GiB "
                     "| measured / planned | allocator limit GiB | how measured |",
                 "|---|---:|---|---|---|---:|---:|---:|---:|---|"]
        for row in self.rows:
            r = row.get("result") or {}
            planned, why = self.planner.result(row["plan"]) if self.planner else (None, "not planned")
            measured = r.get("peak_bytes")
            ratio = f"{measured / planned:.2f}" if planned and measured is not None else "n/a"
            lines.append(f"| {self.label} | {size_name(row['size'])} | {row['batch']} x {row['seq_len']} | {row['attention']} "
                         f"| {row['remat']} | {_fmt(planned and planned / GIB, '.3f', why or 'n/a')} "
                         f"| {_fmt(measured is not None and measured / GIB or None, '.3f', 'not measured: ' + r.get('status', 'not run'))} "
                         f"| {ratio} | {_fmt(r.get('limit_bytes') and r['limit_bytes'] / GIB, '.1f')} "
                         f"| {r.get('how', '')} |")
        lines += ["", "planned: the run's step compiled ahead of time for this backend on fake CPU devices "
                      "(docs/MEMORY.md: it errs high on GPU: CPU scheduling, float32 upcasts, no cuDNN workspace)."]
        return lines

    def sweep_lines(self) -> list[str]:
        s = self.sweep
        lines = ["", f"## Sweep through Ray: 2 runs, a fresh worker each, one killed and resumed"
                     f"{' (' + DRY + ')' if self.dry else ''}", ""]
        if s is None:
            return lines + ["not run"]
        lines.append(f"medscale's pipeline on a local Ray with {s['ray_gpus']} GPU(s)"
                     f"{' (logical: the workers train on CPU)' if self.dry else ''}, resources "
                     f"{s['spec']['resources']}, {s['wall_s']:.0f} s in all"
                     + (f"; error: {s['error']}" if s.get("error") else ""))
        k = s.get("killed")
        lines.append(f"killed: {'worker pid %d of run %s, checkpoint at step %d on disk' % (k['pid'], k['run'], k['checkpoint']) if k else 'nothing (no run was seen training with a checkpoint)'}")
        lines += ["", "| measured on | run | shape | seed | state | attempts | worker pid(s) | resumed from step "
                      "| backend | loss | tok/s |", "|---|---|---|---:|---|---:|---|---:|---|---:|---:|"]
        for r in s["runs"]:
            pids = ([str(k["pid"]) + " (killed)"] if k and k["run"] == r["run"] else []) + [str(r["pid"])]
            lines.append(f"| {self.label} | {r['run']} | {r['shape']} | {r['seed']} | {r['state']} | {r['attempts']} "
                         f"| {', '.join(pids)} | {r['resumed_from_step']} | {r['backend']} "
                         f"| {_fmt(r['loss'], '.4f')} | {_fmt(r['tokens_per_sec'])} |")
        lines += [""] + [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in s["checks"].items()]
        return lines

    def torch_lines(self) -> list[str]:
        lines = ["", f"## PyTorch, the same model (bench_train_throughput.py's peer){' (' + DRY + ')' if self.dry else ''}", ""]
        if self.torch is None:
            return lines + ["not run"]
        rows = [t for t in self.torch if "framework" in t]
        lines += [t["status"] for t in self.torch if "framework" not in t]
        if rows:
            jax_row = next((r for r in self.rows if r["attention"] == "auto" and r["remat"] == "none"), None)
            jax_tps = tokens_per_s(jax_row)[0] if jax_row else None
            lines += ["| measured on | framework | size | batch x len | dtype | tok/s median | tok/s best | MFU median "
                      "| JAX (auto, remat none) / this | loss | status |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
            for row in rows:
                r, (med, best) = row["result"], tokens_per_s(row)
                lines.append(f"| {self.label} | {row['framework']} | {size_name(row['size'])} | {row['batch']} x {row['seq_len']} "
                             f"| {row['dtype']} | {_fmt(med)} | {_fmt(best)} | {self.mfu(row, med)} "
                             f"| {_fmt(jax_tps and med and jax_tps / med, '.2f')} | {_fmt(r.get('loss'), '.4f')} "
                             f"| {r['status']} |")
            lines += ["", "PyTorch gets its fastest path, `is_causal` SDPA without the packed subjects' mask "
                          "(JAX masks two subjects per window); float32 weights, bf16 autocast on GPU; AdamW at a "
                          "constant rate (JAX: the runs' warmup schedule), so the losses are not comparable."]
        return lines

    def write(self) -> None:
        from medscale.atomic import write_text

        text = "\n".join(self.header() + self.throughput() + self.memory() + self.sweep_lines() + self.torch_lines()
                         + ["", "## Sections: time, skips, failures", ""] + [f"- {x}" for x in self.budget.log]) + "\n"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.out, text)


# --------------------------------------------------------------------------------------------- main
def probe() -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker=probe"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    if done.returncode:
        raise SystemExit(f"bench_gpu: JAX could not start:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> int:
    dry = args.dry_run
    prepare_environment(dry)
    budget = Budget(args.budget_s)
    caps = TIMES["dry" if dry else "gpu"][1]
    work = Path(tempfile.mkdtemp(prefix="msgpu-"))  # short: Ray's socket paths live under it
    try:
        device = probe()
        print(f"device: {device['kind']} ({device['platform']}), jax {device['jax']}", flush=True)
        if device["platform"] == "cpu" and not dry:
            print("bench_gpu: no accelerator here (JAX sees only the CPU): nothing measured, nothing written. "
                  "`--dry-run` runs the same path on CPU.")
            return 0
        name = f"gpu-{slug(device['kind'])}"
        out = args.out or (Path(tempfile.gettempdir()) / "medscale-bench-gpu" / f"{name}-dry-run.md" if dry
                           else RESULTS / f"{name}.md")
        report = Report(args, device, out, budget)
        report.rows = rows = throughput_rows(args)
        report.planner = planner = Planner(rows, {"cpu": "cpu", "tpu": "tpu"}.get(device["platform"], "gpu"), budget)
        report.write()

        def sweep(deadline: float) -> None:
            # a dry run's logical GPUs: its two runs overlap on the two cores of a CI machine
            report.sweep = section_sweep(deadline, work, dry, 2 if dry else device["count"])
            if killed := report.sweep["killed"]:
                print(f"  killed worker pid {killed['pid']} of run {killed['run']} on purpose (Ray's message about "
                      "a dead worker is about it)", flush=True)
            print(f"  {report.sweep['checks']}", flush=True)

        def torch(deadline: float) -> None:
            report.torch = section_torch(args, rows, deadline, work, device["platform"] == "gpu")

        sections = {"throughput": lambda deadline: section_throughput(args, rows, deadline, work, dry, report),
                    "sweep": sweep, "torch": torch}
        for name, run in sections.items():
            print(name, flush=True)
            if (deadline := budget.section(name, *caps[name])) is None:
                continue
            started = time.monotonic()
            try:
                run(deadline)
                budget.log.append(f"{name}: ran {time.monotonic() - started:.0f} s (cap {caps[name][0]} s)")
            except Exception as err:  # noqa: BLE001 - a section that breaks (say Ray missing) leaves the others
                budget.log.append(f"{name}: FAILED after {time.monotonic() - started:.0f} s: "
                                  f"{type(err).__name__}: {str(err)[:500]}")
                print(traceback.format_exc(), file=sys.stderr)
            report.write()
        planner.wait(budget.left() - 2)  # the planner had the whole run; what it did not finish is said so
        budget.log.append(f"whole run: {budget.total_s - budget.left():.0f} s of a {budget.total_s:.0f} s budget")
        report.write()
        print(f"written to {out}")
        return 0
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.worker == "probe":
        probe_worker()
    elif ARGS.worker == "jax":
        jax_worker(json.loads(ARGS.row))
    elif ARGS.worker == "torch":
        torch_worker(json.loads(ARGS.row))
    else:
        sys.exit(main(ARGS))
