"""The library behind the `medscale` command: each function is one thing a user does, callable from a
notebook as well as from the CLI (which only parses options and renders what these return).

    spec, prepared = load_spec_and_data("experiments/demo_decoder_isoflop.yaml", "runs/")
    runs = expand_over(spec, prepared, "experiments/demo_decoder_isoflop.yaml")
    results = launch_sweep(spec, runs, "runs/")
    table = run_downstream("runs/", spec.downstream)

Progress is reported through plain callbacks; a `Reporter` bundles the ones a long pipeline needs.
"""
from __future__ import annotations

import contextlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import pandas as pd

from medscale.scaling.errors import UserError

DRY_RUN_VOCAB = 4096  # vocabulary assumed for a dry run before the dataset is tokenized
StageProgress = Callable[[str, int, int], None]


class Reporter:
    """How a pipeline tells a person what it is doing. The default says nothing."""

    def say(self, message: str) -> None:
        pass

    def stages(self, label: str) -> ContextManager[StageProgress]:
        """A context giving a `(stage, done, total)` callback for a multi-stage step (dataset, downstream)."""
        return contextlib.nullcontext(lambda stage, done, total: None)

    def sweep(self, name: str) -> ContextManager[Callable]:
        """A context giving a callback that receives scheduler.SweepProgress updates."""
        return contextlib.nullcontext(lambda progress: None)


# ---------------------------------------------------------------------------------------------
# Specs, datasets and runs
# ---------------------------------------------------------------------------------------------

def load_spec_and_data(spec_path: Path | str, out_dir: Path | str, reporter: Reporter | None = None):
    """Validate the spec and its whole grid first (cheap), then prepare the dataset (costly)."""
    from medscale.scaling.dataset import prepare_dataset
    from medscale.scaling.spec import expand, load_spec

    reporter = reporter or Reporter()
    spec = load_spec(spec_path)
    if spec.model.param_count == "non_embedding":  # the grid does not depend on the vocabulary: check it now
        expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source=str(spec_path))
    with reporter.stages("dataset") as progress:
        prepared = prepare_dataset(spec, Path(out_dir), progress=progress)
    return spec, prepared


def expand_over(spec, prepared, source: Path | str) -> list[dict]:
    """The spec's runs as resolved configs over a prepared dataset."""
    from medscale.scaling.spec import expand

    return expand(spec, token_dir=str(prepared.token_dir.absolute()), vocab_size=prepared.vocab_size,
                  dataset_id=prepared.dataset_id, source=str(source))


def plan_sweep(spec_path: Path | str, out_dir: Path | str, reporter: Reporter | None = None):
    """(spec, runs) for a dry run: prepares nothing unless the run shapes depend on the vocabulary."""
    from medscale.scaling.dataset import dataset_path
    from medscale.scaling.spec import dataset_id, expand, load_spec

    reporter = reporter or Reporter()
    spec = load_spec(spec_path)
    ds_id = dataset_id(spec)
    manifest = dataset_path(spec, out_dir) / "tokens" / "manifest.json"
    if manifest.exists() or spec.model.param_count == "non_embedding":
        vocab = json.loads(manifest.read_text())["vocab_size"] if manifest.exists() else DRY_RUN_VOCAB
        if not manifest.exists():
            reporter.say(f"dataset not prepared yet: vocabulary assumed {DRY_RUN_VOCAB} (run ids are provisional)")
        return spec, expand(spec, token_dir=str(manifest.parent), vocab_size=vocab, dataset_id=ds_id,
                            source=str(spec_path))
    reporter.say("model.param_count is total: preparing the dataset to know its vocabulary")
    spec, prepared = load_spec_and_data(spec_path, out_dir, reporter)
    return spec, expand_over(spec, prepared, spec_path)


@dataclass
class Plan:
    """A dry run's estimate: one row per run, the device speed assumed, the total."""
    rows: list[dict]
    peak_flops: float
    peak_source: str
    efficiency: float
    efficiency_source: str

    @property
    def total_s(self) -> float:
        return sum(r["est_s"] for r in self.rows)


def measured_efficiency(out_dir: Path | str) -> tuple[float, str]:
    """Median MFU of the finished runs already in the store, else an assumption (said so)."""
    from medscale.scaling.store import RunStore

    mfus = [m["mfu"] for r in RunStore(out_dir).runs() if (m := r.metrics()) and m.get("mfu")]
    if mfus:
        return statistics.median(mfus), f"median MFU of {len(mfus)} finished runs"
    return 0.10, "assumed MFU (no finished runs yet)"


def estimate_plan(runs: list[dict], out_dir: Path | str) -> Plan:
    """Per-run size, tokens, FLOPs and estimated time on this machine, for `medscale sweep --dry-run`."""
    from medscale.models.config import ModelConfig, param_counts
    from medscale.scaling.flops import device_peak_flops, flops_per_token
    from medscale.scaling.store import run_id

    peak, source = device_peak_flops()
    efficiency, how = measured_efficiency(out_dir)
    rows = []
    for r in runs:
        cfg = ModelConfig.from_dict(r["model"])
        fl = flops_per_token(cfg, r["data"]["seq_len"], r.get("param_count"))
        tokens = r["train"]["tokens"]
        rows.append({"run": run_id(r), "budget": r["budget"], "shape": f"{cfg.d_model} x {cfg.n_layers} ({cfg.n_heads})",
                     "params_non_embedding": param_counts(cfg).non_embedding, "tokens": tokens,
                     "steps": r["train"]["steps"], "flops_6nd": fl.six_n * tokens, "flops_full": fl.full * tokens,
                     "lr": r["train"]["lr"], "est_s": fl.full * tokens / (peak * efficiency)})
    return Plan(rows, peak, source, efficiency, how)


def train_one(config_path: Path | str, out_dir: Path | str, *, cpus: int | None = None,
              log: Callable[[str], None] | None = None, reporter: Reporter | None = None) -> tuple[object, str]:
    """Train (or resume) the single run a one-point spec describes, in this process. Returns (run, state);
    state "leased" means another live process is training it."""
    import time

    from medscale.scaling.runtime import configure_process
    from medscale.scaling.store import RunStore

    started = time.time()
    spec, prepared = load_spec_and_data(config_path, out_dir, reporter)
    runs = expand_over(spec, prepared, config_path)
    if len(runs) != 1:
        raise UserError(f"{config_path}: the grid expands to {len(runs)} runs; `medscale train` runs one. "
                        f"Use `medscale sweep {config_path}` for a grid.")
    store = RunStore(out_dir)
    run = store.ensure(runs[0])
    n_cpus = cpus or spec.resources.cpus
    configure_process(cores=n_cpus, host_devices=spec.resources.host_devices or n_cpus,
                      cache_dir=store.root / ".jax_cache")
    from medscale.scaling.train import execute_run

    (log or (lambda m: None))(f"run {run.run_id} -> {run.path}")
    state = execute_run(run, log=log, process_started=started)
    store.write_results()
    return run, state


def launch_sweep(spec, runs: list[dict], out_dir: Path | str, *, address: str | None = None,
                 max_concurrent: int | None = None, retry_failed: bool = False,
                 reporter: Reporter | None = None) -> pd.DataFrame:
    """Run the sweep's runs on Ray (skipping finished ones), then its downstream evaluation if the spec
    has one. Returns this sweep's rows of the results table."""
    from medscale.atomic import write_yaml
    from medscale.scaling.scheduler import run_sweep
    from medscale.scaling.store import RunStore

    reporter = reporter or Reporter()
    store = RunStore(out_dir)
    write_yaml(store.root / "sweeps" / f"{spec.name}.yaml", spec.model_dump())
    run_dirs = [store.ensure(r) for r in runs]
    if retry_failed:
        for run in run_dirs:
            if run.state() == "failed":
                run.set_status("failed", attempts=0)
    with reporter.sweep(spec.name) as on_progress:
        results = run_sweep(store, run_dirs, cpus=spec.resources.cpus, gpus=spec.resources.gpus,
                            tpus=spec.resources.tpus, host_devices=spec.resources.host_devices,
                            retries=spec.retries, address=address, max_concurrent=max_concurrent,
                            on_progress=on_progress)
    mine = results[results["sweep"] == spec.name] if len(results) else results
    counts = mine["status"].value_counts().to_dict() if len(mine) else {}
    reporter.say(f"sweep {spec.name}: {counts}; results in {store.root / 'results.parquet'}")
    if spec.downstream is not None and len(mine):
        run_downstream(store.root, spec.downstream, runs=list(mine.loc[mine["status"] == "done", "run_id"]),
                       reporter=reporter)
    return mine


def run_downstream(store_root: Path | str, downstream_spec, runs: list[str] | None = None,
                   reporter: Reporter | None = None) -> pd.DataFrame:
    """Evaluate the store's finished runs on downstream tasks; returns the table."""
    from medscale.scaling.downstream.evaluate import evaluate_store

    reporter = reporter or Reporter()
    with reporter.stages("downstream") as progress:
        table = evaluate_store(Path(store_root), downstream_spec, runs=runs, progress=progress)
    reporter.say(f"downstream results: {len(table)} rows in {Path(store_root) / 'downstream.csv'}")
    return table


def analyze_store(runs_dir: Path | str, *, report_dir: Path | str | None = None, budget: float | None = None,
                  max_tokens: float | None = None, n_boot: int = 200, title: str | None = None) -> Path:
    """Fit a store's results (and downstream table, if any) and write the HTML report; returns its index."""
    from medscale.analysis.report import write_report
    from medscale.scaling.downstream.evaluate import downstream_data, read_downstream
    from medscale.scaling.results import load_results

    runs_dir = Path(runs_dir)
    results, curves = load_results(runs_dir)
    table = read_downstream(runs_dir)
    downstream = downstream_data(runs_dir, table) if len(table) else None
    at = budget or default_budget(results)
    kwargs = {"title": title} if title else {}
    return write_report(Path(report_dir) if report_dir else runs_dir / "report", results=results, curves=curves,
                        downstream=downstream, budget=at, max_tokens=max_tokens, n_boot=n_boot, **kwargs)


def default_budget(results: pd.DataFrame) -> float:
    """Ten times the largest finished run's compute: where a recommendation is worth making."""
    done = results.loc[results["status"] == "done", "compute"] if len(results) else pd.Series(dtype=float)
    if done.empty:
        raise UserError("no finished runs yet: nothing to fit; run or resume the sweep first")
    return 10 * float(done.max())
