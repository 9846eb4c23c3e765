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
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import pandas as pd
import yaml

from medscale.analysis.adaptive_path import AdaptiveSweep, candidates_of, path_frame, pool_marks
from medscale.analysis.bootstrap import worker_pool
from medscale.analysis.errors import AnalysisError
from medscale.analysis.report import analyze_results, write_report
from medscale.atomic import CorruptFile, OutDirError, read_json, write_yaml
from medscale.models.config import ShapeError, param_counts
from medscale.scaling.downstream.evaluate import downstream_data, evaluate_store, read_downstream
from medscale.scaling.errors import UserError
from medscale.scaling.plan.flops import device_peak_flops, flops_per_token
from medscale.scaling.plan.memory import (GIB, default_cache_dir, device_budget_gib, estimate_memory, remedies,
                                          target_backend)
from medscale.scaling.plan.recommend import recommend
from medscale.scaling.run.run_config import RunConfig
from medscale.scaling.run.runtime import configure_process, process_shape
from medscale.scaling.run.train import execute_run
from medscale.scaling.sweep.adaptive import DECISIONS_DIR, History, Pool, is_adaptive, run_adaptive, target_text
from medscale.scaling.sweep.dataset import check_usable, dataset_path, prepare_dataset
from medscale.scaling.sweep.results import load_results
from medscale.scaling.sweep.scheduler import run_sweep
from medscale.scaling.sweep.spec import (MAX_RUNS, SpecError, dataset_id, expand, grid_size, load_spec, parse_spec,
                                         read_yaml)
from medscale.scaling.sweep.store import RunStore, run_id
from medscale.scaling.sweep.wsd import compute_comparison

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

def load_spec_and_data(spec_path: Path | str, out_dir: Path | str, reporter: Reporter | None = None, *,
                       allow_large_grid: bool = False):
    """Validate the spec and its whole grid first (cheap), then prepare the dataset (costly), then check
    that the dataset can serve the runs (splits, size). A grid over spec.MAX_RUNS runs needs allow_large_grid."""
    reporter = reporter or Reporter()
    spec = load_spec(spec_path, max_runs=None if allow_large_grid else MAX_RUNS)
    if spec.model.param_count == "non_embedding":  # the grid does not depend on the vocabulary: check it now
        expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source=str(spec_path))
    store = RunStore(out_dir, say=reporter.say)
    _refuse_out_inside_input(spec, out_dir)
    store.claim()
    store.refuse_mixed_sweep(spec.name, dataset_id(spec), spec.dataset.model_dump())
    with reporter.stages("dataset") as progress:
        prepared = prepare_dataset(spec, Path(out_dir), progress=progress, say=reporter.say)
    runs = expand_over(spec, prepared, spec_path) if grid_size(spec) <= MAX_RUNS else None  # cheap when small
    check_usable(spec, prepared, str(spec_path), runs, say=reporter.say)
    return spec, prepared


def _refuse_out_inside_input(spec, out_dir: Path | str) -> None:
    if spec.dataset.meds is not None:
        meds, out = Path(spec.dataset.meds).resolve(), Path(out_dir).resolve()
        if out == meds or meds in out.parents:
            raise OutDirError(f"--out {out_dir} is inside the input dataset {spec.dataset.meds}: medscale never "
                              "writes into its input. Choose a folder outside it.")


def expand_over(spec, prepared, source: Path | str) -> list[dict]:
    """The spec's runs as resolved configs over a prepared dataset."""
    return expand(spec, token_dir=str(prepared.token_dir.absolute()), vocab_size=prepared.vocab_size,
                  dataset_id=prepared.dataset_id, source=str(source))


def plan_sweep(spec_path: Path | str, out_dir: Path | str, reporter: Reporter | None = None, *,
               allow_large_grid: bool = False):
    """(spec, runs) for a dry run: prepares nothing unless the run shapes depend on the vocabulary."""
    reporter = reporter or Reporter()
    spec = load_spec(spec_path, max_runs=None if allow_large_grid else MAX_RUNS)
    reporter.say(f"expanding the grid of {spec_path}: {grid_size(spec):,} run(s)")
    ds_id = dataset_id(spec)
    manifest = dataset_path(spec, out_dir) / "tokens" / "manifest.json"
    try:
        vocab = (read_json(manifest) or {}).get("vocab_size")
    except CorruptFile:
        vocab = None
    # a data-constrained adaptive pool reads each fraction's unique tokens from the prepared dataset
    needs_data = is_adaptive(spec) and len(spec.dataset.fractions()) > 1
    if vocab or (spec.model.param_count == "non_embedding" and not needs_data):
        if not vocab:
            vocab = DRY_RUN_VOCAB
            reporter.say(f"dataset not prepared yet: vocabulary assumed {DRY_RUN_VOCAB} (run ids are provisional)")
        return spec, expand(spec, token_dir=str(manifest.parent), vocab_size=vocab, dataset_id=ds_id,
                            source=str(spec_path))
    reporter.say("an adaptive pool over several train fractions: preparing the dataset to know their unique tokens"
                 if needs_data and spec.model.param_count != "total" else
                 "model.param_count is total: preparing the dataset to know its vocabulary")
    spec, prepared = load_spec_and_data(spec_path, out_dir, reporter, allow_large_grid=allow_large_grid)
    return spec, expand_over(spec, prepared, spec_path)


@dataclass
class Plan:
    """A dry run's estimate: one row per run, the device speed assumed, the total; with memory
    planned, each row's per-device memory (scaling/plan/memory.py) against the device budget."""
    rows: list[dict]
    peak_flops: float
    peak_source: str
    efficiency: float
    efficiency_source: str
    memory_planned: bool = False
    budget_gib: float | None = None
    budget_source: str = ""
    devices: int = 1
    backend: str = "cpu"
    wsd: dict | None = None  # a WSD plan: its FLOPs against the same grid under cosine (scaling/sweep/wsd.py)

    def too_big(self) -> list[dict]:
        """The rows whose planned peak exceeds the device budget."""
        if not self.memory_planned or self.budget_gib is None:
            return []
        return [r for r in self.rows if r["mem_peak_gib"] > self.budget_gib]

    @property
    def total_s(self) -> float:
        return sum(r["est_s"] for r in self.rows)


def measured_efficiency(out_dir: Path | str) -> tuple[float, str]:
    """Median MFU of the finished runs already in the store, else an assumption (said so)."""
    def mfu_of(run) -> float | None:
        try:
            return (run.metrics() or {}).get("mfu")
        except CorruptFile:
            return None

    mfus = [m for r in RunStore(out_dir).runs() if (m := mfu_of(r))]
    if mfus:
        return statistics.median(mfus), f"median MFU of {len(mfus)} finished runs"
    return 0.10, "assumed MFU (no finished runs yet)"


def estimate_plan(runs: list[RunConfig], out_dir: Path | str, resources=None, memory: bool = True) -> Plan:
    """Per-run size, tokens, FLOPs and estimated time on this machine, for `medscale sweep --dry-run`;
    with `memory`, each run's per-device memory on the devices `resources` (a spec's) gives it."""
    peak, source = device_peak_flops()
    efficiency, how = measured_efficiency(out_dir)
    runs = [RunConfig.coerce(r) for r in runs]
    rows = []
    for r in runs:
        cfg = r.model
        fl = flops_per_token(cfg, r.data.seq_len, r.param_count)
        tokens = r.train.tokens
        trained = tokens * r.trained_steps / r.train.steps  # a WSD branch trains only its cooldown
        fork = r.train.fork
        rows.append({"run": run_id(r), "budget": r.budget, "shape": f"{cfg.d_model} x {cfg.n_layers} ({cfg.n_heads})",
                     "params_non_embedding": param_counts(cfg).non_embedding, "tokens": tokens,
                     "steps": r.train.steps, "flops_6nd": fl.six_n * tokens, "flops_full": fl.full * tokens,
                     "lr": r.train.lr, "est_s": fl.full * trained / (peak * efficiency),
                     "fork": f"{fork[0]}@{fork[1]}" if fork else None})
    wsd = any(r.train.is_wsd for r in runs)
    plan = Plan(rows, peak, source, efficiency, how, wsd=compute_comparison(runs) if wsd else None)
    if memory and runs:
        plan_memory(plan, runs, resources)
    return plan


def plan_memory(plan: Plan, runs: list[dict], resources=None, cache_dir: Path | str | None = None) -> Plan:
    """Add each run's per-device memory (an AOT compile of its train step, cached) and the budget.

    The cache lives outside --out (memory.default_cache_dir): a dry run writes nothing there.
    """
    plan.backend = target_backend(resources)
    plan.devices = resources.devices_per_run() if resources is not None else 1
    try:
        plan.budget_gib, plan.budget_source = device_budget_gib(resources)
    except ValueError as err:
        raise SpecError(str(err)) from None
    if plan.budget_gib is None and plan.backend == "cpu":  # host devices share this machine's memory
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
        plan.budget_gib = ram / plan.devices
        plan.budget_source = f"this machine's {ram:.0f} GiB / {plan.devices} host devices"
    estimates = estimate_memory(runs, devices=plan.devices, backend=plan.backend,
                                cache_dir=cache_dir or default_cache_dir())
    for row, est in zip(plan.rows, estimates):
        row.update(mem_params_gib=est.params / GIB, mem_opt_gib=est.opt_state / GIB,
                   mem_temp_gib=est.temporaries / GIB, mem_peak_gib=est.peak_gib)
    plan.memory_planned = True
    return plan


def refuse_if_too_big(plan: Plan, runs: list[dict], source: str) -> None:
    """SpecError (exit 2) naming every run that will not fit its device, and what to change."""
    big = {r["run"] for r in plan.too_big()}
    if not big:
        return
    lines = [f"{source}: {len(big)} run(s) will not fit in {plan.budget_gib:.0f} GiB per device "
             f"({plan.budget_source}); nothing was launched."]
    for row, run in zip(plan.rows, map(RunConfig.coerce, runs)):
        if row["run"] in big:
            lines.append(f"  - {row['run']} ({row['shape']}, batch {run.data.batch_size} x "
                         f"{run.data.seq_len}): {row['mem_peak_gib']:.1f} GiB per device on "
                         f"{plan.devices} {plan.backend} device(s). Remedies: {remedies(run)}")
    raise SpecError("\n".join(lines))


def check_fits(spec, runs: list[dict], out_dir: Path | str, source: str) -> None:
    """Before a launch: when the spec names a device budget, refuse (SpecError) runs that exceed it."""
    if not (spec.resources.device_memory_gb or spec.resources.accelerator) or not runs:
        return
    plan = Plan([{"run": run_id(r), "shape": f"{r.model.d_model} x {r.model.n_layers}"} for r in map(RunConfig.coerce, runs)],
                0.0, "", 0.0, "")
    refuse_if_too_big(plan_memory(plan, runs, spec.resources), runs, source)


def train_one(config_path: Path | str, out_dir: Path | str, *, cpus: int | None = None,
              log: Callable[[str], None] | None = None, reporter: Reporter | None = None) -> tuple[object, str]:
    """Train (or resume) the single run a one-point spec describes, in this process. Returns (run, state);
    state "leased" means another live process is training it."""
    started = time.time()
    spec, prepared = load_spec_and_data(config_path, out_dir, reporter)
    runs = expand_over(spec, prepared, config_path)
    if len(runs) != 1:
        raise UserError(f"{config_path}: the grid expands to {len(runs)} runs; `medscale train` runs one. "
                        f"Use `medscale sweep {config_path}` for a grid.")
    if spec.resources.hosts > 1:
        raise UserError(f"{config_path}: resources.hosts is {spec.resources.hosts}: a run of several processes "
                        f"is started on Ray; use `medscale sweep {config_path}` (it runs this one run as a gang)")
    check_fits(spec, runs, out_dir, str(config_path))
    store = RunStore(out_dir, say=(reporter or Reporter()).say)
    run = store.ensure(runs[0])
    n_cpus = cpus or spec.resources.cpus
    configure_process(cores=n_cpus, host_devices=process_shape(n_cpus, spec.resources.host_devices, False)[1])

    (log or (lambda m: None))(f"run {run.run_id} -> {run.path}")
    state = execute_run(run, log=log, process_started=started)
    store.write_results()
    return run, state


def launch_sweep(spec, runs: list[dict], out_dir: Path | str, *, address: str | None = None,
                 max_concurrent: int | None = None, retry_failed: bool = False,
                 reporter: Reporter | None = None) -> pd.DataFrame:
    """Run the sweep's runs on Ray (skipping finished ones), then its downstream evaluation if the spec
    has one. Returns this sweep's rows of the results table."""
    reporter = reporter or Reporter()
    check_fits(spec, runs, out_dir, spec.name)
    store = RunStore(out_dir, say=reporter.say).claim()
    if runs:
        store.refuse_mixed_sweep(spec.name, RunConfig.coerce(runs[0]).data.dataset_id, spec.dataset.model_dump())
        store.refuse_changed_sweep(spec.name, runs)  # before the spec copy is overwritten
    write_yaml(store.root / "sweeps" / f"{spec.name}.yaml", spec.model_dump())
    run_dirs = [store.ensure(r) for r in runs]
    if retry_failed:
        for run in run_dirs:
            if run.state() == "failed":
                run.set_status("failed", attempts=0)
    with reporter.sweep(spec.name) as on_progress:
        results = run_sweep(store, run_dirs, cpus=spec.resources.cpus, gpus=spec.resources.gpus,
                            tpus=spec.resources.tpus, host_devices=spec.resources.host_devices,
                            hosts=spec.resources.hosts, retries=spec.retries, address=address, max_concurrent=max_concurrent,
                            on_progress=on_progress)
    mine = results[results["sweep"] == spec.name] if len(results) else results
    counts = mine["status"].value_counts().to_dict() if len(mine) else {}
    reporter.say(f"sweep {spec.name}: {counts}; results in {store.root / 'results.parquet'}")
    failed = mine.loc[mine["status"] == "failed", "run_id"].tolist() if len(mine) else []
    if failed:  # the truth, in the exit status: the CLI exits 1
        errors = [f"  {run_id}: {first_error(store.run_dir(run_id))}" for run_id in failed]
        raise SweepFailed(f"sweep {spec.name}: {len(failed)} of {len(mine)} runs failed (each after "
                          f"{spec.retries + 1} attempts):\n" + "\n".join(errors) +
                          "\nFix the cause, then rerun with --retry-failed; finished runs are kept.", mine)
    if spec.downstream is not None and len(mine):
        run_downstream(store.root, spec.downstream, runs=list(mine.loc[mine["status"] == "done", "run_id"]),
                       reporter=reporter)
    return mine


def launch_adaptive_sweep(spec, runs: list[dict], out_dir: Path | str, **kwargs):
    """An adaptive sweep (grid.mode adaptive) over its expanded pool `runs`: the initial design, then batch after
    batch chosen by the expected reduction of the target's interval per FLOP, each through launch_sweep; resumes
    from its recorded decisions. Keywords as launch_sweep's, and `max_batches`, `source`. Returns
    scaling/sweep/adaptive.py's AdaptiveRun."""
    return run_adaptive(spec, runs, out_dir, **kwargs)


class SweepFailed(RuntimeError):
    """A sweep ended with failed runs; the message gives the first error of each."""

    def __init__(self, message: str, results: pd.DataFrame):
        super().__init__(message)
        self.results = results


def first_error(run) -> str:
    """The first line of the error a failed run recorded last (its last line when it is a traceback)."""
    error = str(run.status().get("error") or "no error recorded (the worker died?)").strip()
    lines = error.splitlines()
    return (lines[-1] if lines and lines[0].startswith("Traceback") else lines[0] if lines else error)[:500]


def run_downstream(store_root: Path | str, downstream_spec, runs: list[str] | None = None,
                   reporter: Reporter | None = None) -> pd.DataFrame:
    """Evaluate the store's finished runs on downstream tasks; returns the table."""
    reporter = reporter or Reporter()
    with reporter.stages("downstream") as progress:
        table = evaluate_store(Path(store_root), downstream_spec, runs=runs, progress=progress)
    reporter.say(f"downstream results: {len(table)} rows in {Path(store_root) / 'downstream.csv'}")
    return table


@dataclass
class StoreAnalysis:
    """What `analyze_store` made: the report, and the objects it was written from, for printing the same
    numbers elsewhere (each law is fitted once; nothing is read back from fits.json)."""
    report: Path  # index.html
    budget: float
    analysis: object  # analysis.report.Analysis: every objective's fits
    recommendations: dict  # objective -> scaling.recommend.recommend(...) from the analysis's law, or why none
    fits: dict  # what fits.json holds

    def recommendation(self, objective: str = "decoder") -> dict:
        """The objective's recommendation, or the AnalysisError saying why there is none."""
        rec = self.recommendations.get(objective)
        if isinstance(rec, dict):
            return rec
        raise AnalysisError(f"no recommendation for the {objective} runs: {rec or 'no such runs'}")


def fit_store(runs_dir: Path | str, *, budget: float | None = None, max_tokens: float | None = None,
              n_boot: int = 200, seed: int = 0, n_jobs: int | None = 1):
    """Every law fitted once, per objective, to a store's finished runs (analysis.report.Analysis): what
    `analyze_store` reports from. `budget` default: `default_budget`. `n_jobs`: processes for the fits'
    bootstraps and validation folds; None: $MEDSCALE_ANALYSIS_JOBS, else every core, as `medscale analyze` and
    the demo run it (a script that asks for more than one needs the `if __name__ == "__main__":` guard once JAX
    is imported: the processes are then spawned). The numbers do not depend on it."""
    return _fit_results(*load_results(Path(runs_dir)), budget=budget, max_tokens=max_tokens, n_boot=n_boot,
                        seed=seed, n_jobs=n_jobs)


def _fit_results(results: pd.DataFrame, curves, *, budget, max_tokens, n_boot: int, seed: int, n_jobs):
    with worker_pool(n_jobs) as jobs:
        return analyze_results(results, curves, budget=budget or default_budget(results), max_tokens=max_tokens,
                               n_boot=n_boot, seed=seed, n_jobs=jobs)


def analyze_store(runs_dir: Path | str, *, report_dir: Path | str | None = None, budget: float | None = None,
                  max_tokens: float | None = None, n_boot: int = 200, title: str | None = None,
                  downstream=None, seed: int = 0, n_jobs: int | None = 1, analysis=None) -> StoreAnalysis:
    """Fit a store's results once (every law, per objective: `fit_store`, or its `analysis` when given), recommend
    a compute-optimal run per objective from those same fits, and write the HTML report and fits.json from them.
    `downstream`: the report's downstream data (default: the store's downstream table, if any). `n_jobs`: as
    `fit_store`."""
    runs_dir = Path(runs_dir)
    results, curves = load_results(runs_dir)
    if downstream is None:
        table = read_downstream(runs_dir)
        downstream = downstream_data(runs_dir, table) if len(table) else None
    if analysis is None:
        analysis = _fit_results(results, curves, budget=budget, max_tokens=max_tokens, n_boot=n_boot, seed=seed,
                                n_jobs=n_jobs)
    at = analysis.budget
    sweeps = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((runs_dir / "sweeps").glob("*.yaml"))}
    recs: dict = {}
    for name, fits in analysis.objectives.items():
        if fits.law is None or "objective" not in results.columns:
            recs[name] = (fits.skipped.get(3) or fits.dc_error or "no parametric law was fitted")
            continue
        try:
            recs[name] = recommend(results, at, objective=name, max_tokens=max_tokens, n_boot=n_boot, seed=seed,
                                   sweeps=sweeps, law=fits.law, flops_per_token=fits.fpt)
        except (AnalysisError, ShapeError) as err:
            recs[name] = str(err)
    kwargs = {"title": title} if title else {}
    index = write_report(Path(report_dir) if report_dir else runs_dir / "report", downstream=downstream,
                         analysis=analysis, recommendations=recs, adaptive=adaptive_sweeps(runs_dir), **kwargs)
    return StoreAnalysis(report=index, budget=at, analysis=analysis, recommendations=recs, fits=analysis.fits_json)


def adaptive_sweeps(runs_dir: Path | str) -> list[AdaptiveSweep]:
    """The store's adaptive sweeps as the report shows them: each one's recorded decisions (History), its pool of
    candidates and what the full grid would cost. The pool is the sweep's spec (sweeps/<name>.yaml) expanded over
    its prepared dataset when that reproduces the recorded pool (pool.json); else the candidates the initial
    decision records, each priced from scratch (under WSD that overstates the full grid's cost)."""
    root = Path(runs_dir)
    out = []
    for folder in sorted(p for p in (root / DECISIONS_DIR).glob("*") if p.is_dir()):
        decisions = History(root, folder.name).decisions()
        if not decisions:
            continue
        try:
            known = read_json(folder / "pool.json") or {}
        except CorruptFile:
            known = {}
        spec = _stored_spec(root, folder.name)
        pool = _recorded_pool(root, spec, known.get("pool")) if spec is not None else None
        if pool is not None:
            candidates = pd.DataFrame({"run_id": pool.ids, "params": pool.params, "tokens": pool.tokens,
                                       "cost": pool.full})
            pool_flops = pool.planned_flops()
        else:
            candidates = candidates_of(decisions)
            pool_flops = float(candidates["cost"].sum())
        target = known.get("target") or {}
        words = (target_text(spec.grid, pool) if spec is not None else
                 f"N_opt at C = {target['n_opt_at']:.3g} FLOPs (6ND)" if target.get("n_opt_at") else
                 "the loss of the planned runs")
        last = decisions[-1]
        out.append(AdaptiveSweep(
            name=folder.name, objective=str(spec.objective) if spec is not None else "decoder", target=words,
            path=path_frame(decisions, pool_flops), pool=pool_marks(candidates, decisions), pool_flops=pool_flops,
            budget=float(last["budget"]) if last.get("budget") else None,
            stopped=last.get("stopped") if last["kind"] == "stop" else None))
    return out


def _stored_spec(root: Path, name: str):
    """The spec a sweep stored (sweeps/<name>.yaml), or None where it is absent or no longer valid."""
    path = root / "sweeps" / f"{name}.yaml"
    try:
        return parse_spec(read_yaml(path), source=str(path), base_dir=path.parent)
    except (SpecError, OSError):
        return None


def _recorded_pool(root: Path, spec, identity: str | None) -> Pool | None:
    """The adaptive sweep's Pool from its spec and the store's prepared dataset, when that is the pool its
    decisions were made over (`identity`, pool.json's); else None."""
    tokens = dataset_path(spec, root) / "tokens"
    try:
        vocab = (read_json(tokens / "manifest.json") or {})["vocab_size"]
        pool = Pool.of(expand(spec, token_dir=str(tokens.absolute()), vocab_size=vocab, dataset_id=dataset_id(spec),
                              source=f"sweeps/{spec.name}.yaml"))
    except (SpecError, ShapeError, CorruptFile, OSError, KeyError, TypeError, ValueError):
        return None
    return pool if pool.identity() == identity else None


def default_budget(results: pd.DataFrame) -> float:
    """Ten times the largest finished run's compute: where a recommendation is worth making."""
    done = results.loc[results["status"] == "done", "compute"] if len(results) else pd.Series(dtype=float)
    if done.empty:
        raise UserError("no finished runs yet: nothing to fit; run or resume the sweep first")
    return 10 * float(done.max())
