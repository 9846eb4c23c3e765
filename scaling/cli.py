"""The `medscale` command. Heavy imports (JAX, Ray) happen inside the commands that need them,
so `medscale fit` and `--help` stay fast and work without an accelerator stack.

A user's input error (bad YAML, malformed MEDS, impossible shape, too few points, an output folder
that is not medscale's) prints one clear message and exits with status 2; an environment failure (a
read-only path, a full disk) exits with status 1; a sweep with failed runs exits 1 after naming each
run's error; an interrupt (Ctrl-C: 130, SIGTERM: 143) says that rerunning the command resumes. None of
these shows a traceback.
"""
from __future__ import annotations

from medscale.scaling.run.runtime import keep_freed_memory

# before any import starts a thread (numpy's and scipy's BLAS pools, then pyarrow's, Ray's, XLA's),
# so that all of them share one malloc heap that keeps freed memory (scaling/run/runtime.py)
keep_freed_memory()

import contextlib  # noqa: E402
import errno
import functools
import json
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import typer
import yaml
from rich.console import Console
from rich.markup import escape

from medscale.analysis import fit_families, fit_table
from medscale.analysis.bounds import at_bound, marks, short
from medscale.analysis.errors import AnalysisError
from medscale.analysis.selection import planned_sizes
from medscale.analysis.summary import _plain, read_table
from medscale.atomic import CorruptFile, OutDirError, write_yaml
from medscale.data.meds import MedsError
from medscale.data.simulator import generate_cohort
from medscale.models.config import ShapeError
from medscale.scaling.demo import families_lines, run_demo
from medscale.scaling.downstream import load_downstream_spec
from medscale.scaling.downstream.evaluate import mixed_sources
from medscale.scaling.downstream.forecast import forecast_lines
from medscale.scaling.errors import UserError
from medscale.scaling.pipeline import (Reporter, SweepFailed, analyze_store, estimate_plan, expand_over,
                                       launch_adaptive_sweep, launch_sweep, load_spec_and_data, plan_sweep,
                                       refuse_if_too_big, run_downstream, train_one)
from medscale.scaling.plan.recommend import recommend, run_spec
from medscale.scaling.run.export import export_run, partial_warning
from medscale.scaling.sweep.adaptive import dry_run_lines, is_adaptive
from medscale.scaling.sweep.results import load_results
from medscale.scaling.sweep.spec import SpecError
from medscale.scaling.sweep.store import RunStore

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="medscale: scaling-law studies for medical event foundation models.")


class _Console(Console):
    """A rich console that never breaks a line of text written to a file or a pipe: rich wraps at 80 columns
    when the output is not a terminal, which split a value from its label and warnings mid-sentence. A
    terminal still wraps long lines as usual; anything else gets each line whole."""

    @property
    def soft_wrap(self) -> bool:  # read by Console.print when no soft_wrap= is given
        return self._soft_wrap_default or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap_default = bool(value)


console = _Console(stderr=True)
out = _Console()


RESUME_HINT = "rerun the same command to resume (finished runs and checkpoints are kept; partial output is redone)"
ENVIRONMENT_ERRNOS = {errno.EACCES: "it is not writable (or readable): fix its permissions or choose another path",
                      errno.EPERM: "the operation is not permitted there: fix its permissions or choose another path",
                      errno.EROFS: "it is on a read-only file system: choose a writable path",
                      errno.ENOSPC: "the disk is full: free some space",
                      errno.EDQUOT: "the disk quota is exceeded: free some space"}


_received: list[int] = []  # the signals that ended the command (Ray's wait reports them as SystemExit(1))


def _on_signal(signum, frame):
    """SIGTERM and SIGINT unwind the command as SystemExit (leases released, Ray shut down); the one
    exception that passes through Ray's native wait cleanly."""
    _received.append(signum)
    raise SystemExit(128 + signum)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medscale.data.tasks import TaskError
    return (SpecError, MedsError, ShapeError, AnalysisError, TaskError, UserError, OutDirError, CorruptFile)


def _error(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=code)


def _os_error(err: OSError) -> typer.Exit:
    """One line naming the path and what to do. Environment failures exit 1, a wrong path given exit 2."""
    path = err.filename or ""
    why = err.strerror or str(err)
    if err.errno in ENVIRONMENT_ERRNOS:
        return _error(f"{path}: {why}: {ENVIRONMENT_ERRNOS[err.errno]}; then {RESUME_HINT}", 1)
    hints = {errno.EISDIR: "a folder was given where a file is expected",
             errno.ENOTDIR: "a file was given (or is in the way) where a folder is expected",
             errno.ENOENT: "check the path", errno.EEXIST: "remove it or choose another path"}
    return _error(f"{path}: {why}: {hints.get(err.errno, 'check the path')}", 2 if err.errno in hints else 1)


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_error_types() as err:
            raise _error(str(err), 2) from None
        except SweepFailed as err:
            raise _error(str(err), 1) from None
        except OSError as err:
            raise _os_error(err) from None
        except KeyboardInterrupt:
            raise _error(f"interrupted (SIGINT); {RESUME_HINT}", 128 + signal.SIGINT) from None
        except SystemExit:
            if not _received:
                raise
            sig = _received[0]
            raise _error(f"{'terminated' if sig == signal.SIGTERM else 'interrupted'} ({signal.Signals(sig).name}); "
                         f"{RESUME_HINT}", 128 + sig) from None

    return wrapper


def _print_wide(renderable) -> None:
    """A table at its full width: a file or a pipe gets no 80-column cut (a terminal wraps as usual)."""
    if out.is_terminal:
        out.print(renderable)
        return
    width = max(out.width, out.measure(renderable, options=out.options.update_width(100_000)).maximum)
    narrow, out.width = out.width, width  # Console.print(width=) cannot exceed the console's own width
    try:
        out.print(renderable)
    finally:
        out.width = narrow


class _NoProgress:
    """The calls of rich's Progress, drawing nothing: a bar written to a file or a pipe is a frozen snapshot
    (often part-filled) in a log, so none is drawn there."""

    def add_task(self, description: str, total=None, **fields) -> int:
        return 0

    def update(self, task, **fields) -> None:
        pass


class _LazyProgress:
    """rich's Progress, started by the first add_task: a command refused while its input is checked (before
    the work reports any progress) draws no bar."""

    def __init__(self, stack: contextlib.ExitStack, make: Callable):
        self._stack, self._make, self.progress = stack, make, None

    def add_task(self, description: str, total=None, **fields) -> int:
        if self.progress is None:
            self.progress = self._stack.enter_context(self._make())
        return self.progress.add_task(description, total=total, **fields)

    def update(self, task, **fields) -> None:
        self.progress.update(task, **fields)


@contextlib.contextmanager
def _progress_bar(description: str):
    """Progress bars on a terminal (stderr), drawn from the first task added (add tasks when the work first
    reports progress, after its input is checked) and ending full when the work ends without an error;
    nothing when stderr is not a terminal."""
    if not console.is_terminal:
        yield _NoProgress()
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with contextlib.ExitStack() as stack:
        lazy = _LazyProgress(stack, lambda: Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=False))
        yield lazy
        progress = lazy.progress
        for task in progress.tasks if progress else ():  # a stage whose last callback came before its last unit
            if task.total is not None and task.completed < task.total:
                progress.update(task.id, completed=task.total)
            elif task.total is None and task.completed:
                progress.update(task.id, total=task.completed)


class RichReporter(Reporter):
    """The pipeline's progress as rich progress bars and live sweep lines (one line per change in logs)."""

    def say(self, message: str) -> None:
        out.print(message, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def stages(self, label: str):
        with _progress_bar(label) as progress:
            tasks: dict[str, int] = {}

            def update(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            yield update

    @contextlib.contextmanager
    def sweep(self, name: str):
        if not console.is_terminal:  # logs: one whole line per change, no live display
            last: list[tuple] = [()]

            def log(p):
                if (p.done, p.running, p.failed, p.diverged) != last[0]:
                    last[0] = (p.done, p.running, p.failed, p.diverged)
                    console.print(f"sweep {name}: {p.line()}", highlight=False, soft_wrap=True, markup=False)

            yield log
            return
        from rich.live import Live

        with Live(console=console, refresh_per_second=2, transient=False) as live:
            yield lambda p: live.update(f"[bold]sweep {name}[/]: {escape(p.line())}")


@app.command()
@user_errors
def generate(
    subjects: int = typer.Option(..., "--subjects", "-n", min=1, help="Number of synthetic patients to simulate."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write the MEDS dataset into (data/, metadata/, ground_truth/)."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed: the same seed gives byte-identical files."),
    shards: Optional[int] = typer.Option(None, "--shards", help="Number of parquet shards (default: about 10,000 subjects each)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel worker processes (default: number of cores)."),
) -> None:
    """Simulate a synthetic MEDS cohort with known ground-truth outcome probabilities."""
    t = time.time()
    with RichReporter().stages("generate") as update:   # the bar starts at the first callback, after the checks
        path = generate_cohort(out_dir, subjects, seed, n_shards=shards, workers=workers,
                               progress=lambda done, total: update("simulating patients", done, total))
    out.print(f"wrote {subjects:,} subjects to {path} in {time.time() - t:.1f}s")


@app.command()
@user_errors
def tokenize(
    meds_dir: Path = typer.Argument(..., help="Root of a MEDS dataset (holding data/ and, optionally, metadata/)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for token shards, the tokenizer and manifest.json."),
    min_count: int = typer.Option(5, "--min-count", min=1, help="Codes seen fewer times in the train split become UNK."),
    value_bins: int = typer.Option(10, "--value-bins", min=0, max=100, help="Quantile bins per numeric code (10 = deciles; 0: no value tokens)."),
    time_scheme: str = typer.Option("bins", "--time-scheme", help="bins (one gap token per gap) or interval (gap tokens repeated for long gaps, absolute time kept)."),
    values: str = typer.Option("separate", "--values", help="separate (code token then value token) or fused (one code+value token)."),
    demographics: bool = typer.Option(True, "--demographics/--no-demographics", help="Start each subject with SEX and AGE tokens."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel worker processes (default: number of cores)."),
) -> None:
    """Validate a MEDS dataset, fit the tokenizer on its train split and write token shards.

    The options are the sweep spec's `dataset.tokenizer` keys (min_count, value_bins, time_scheme, values,
    demographics), so this command checks exactly the tokenization a sweep will use."""
    from medscale.data.token_store import tokenize_dataset
    from medscale.data.tokenizer import TokenizerConfig

    try:
        config = TokenizerConfig(min_count=min_count, n_value_bins=value_bins, time_scheme=time_scheme,
                                 value_scheme=values, demographics=demographics)
    except ValueError as err:
        raise _error(f"tokenize options: {err}", 2) from None
    t = time.time()
    with RichReporter().stages("tokenize") as update:   # the bar starts at the first callback, after the checks
        path = tokenize_dataset(meds_dir, out_dir, config, workers=workers,
                                progress=lambda done, total: update("tokenizing shards", done, total))
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for warning in manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    out.print(f"vocabulary {manifest['vocab_size']:,} tokens; wrote {path} in {time.time() - t:.1f}s")


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="A run config: a sweep spec whose grid holds exactly one point (see experiments/train_tiny.yaml)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run store folder; the run lands in OUT/runs/<hash>/. Rerun after a kill to resume."),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="CPU cores to pin this run to (default: the spec's resources.cpus)."),
) -> None:
    """Train (or resume) one run in this process."""
    run, state = train_one(config, out_dir, cpus=cpus, log=lambda msg: console.print(f"  {msg}", highlight=False),
                           reporter=RichReporter())
    if state == "leased":
        raise UserError(f"run {run.run_id} is being trained by another live process ({run.lease_info()}); not starting it twice")
    metrics = run.metrics() or {}
    out.print(json.dumps({"run_id": run.run_id, "state": state, **{k: metrics.get(k) for k in (
        "loss", "params", "tokens", "compute", "flops_full", "tokens_per_sec", "mfu")}}, indent=2))
    if state == "diverged":
        raise typer.Exit(code=3)
    if state == "preempted":
        from medscale.scaling.run.preemption import EXIT_PREEMPTED

        raise typer.Exit(code=EXIT_PREEMPTED)  # resumable: run the same command again


def wsd_line(cmp: dict) -> str:
    """The dry run's comparison of a WSD plan with the same grid under cosine (scaling/sweep/wsd.py)."""
    saved = 1 - cmp["planned_flops"] / cmp["cosine_flops"] if cmp["cosine_flops"] else 0.0
    return (f"WSD plan: {cmp['planned_flops']:.3g} FLOPs ({cmp['trunks']} trunk(s) trained from step 0, "
            f"{cmp['branches']} branch(es) training only their cooldown) against {cmp['cosine_flops']:.3g} FLOPs "
            f"for the same grid under cosine: {saved:.0%} less compute")


def _plan_table(plan):
    from rich.table import Table

    title = (f"expanded plan: {len(plan.rows)} runs; time at {plan.efficiency:.1%} ({plan.efficiency_source}) "
             f"of the peak {plan.peak_flops / 1e9:.1f} GFLOP/s ({plan.peak_source})")
    if plan.memory_planned:
        budget = f"{plan.budget_gib:.0f} GiB ({plan.budget_source})" if plan.budget_gib else "unknown"
        title += (f"\nmemory per device on {plan.devices} {plan.backend} device(s), planned from an AOT compile "
                  f"of each train step (docs/MEMORY.md); budget {budget}")
    table = Table(title=title)
    columns = ["run", "budget", "d_model x layers (heads)", "params (non-emb)", "tokens", "steps", "FLOPs 6ND",
               "FLOPs full", "lr", "est. time"]
    if plan.wsd:
        columns += ["forks from (trunk@step)"]
    if plan.memory_planned:
        columns += ["GiB params", "GiB opt", "GiB temp", "GiB peak", "fits"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in plan.rows:
        cells = [r["run"], f"{r['budget']:.3g}" if r["budget"] else "-", r["shape"], f"{r['params_non_embedding']:,}",
                 f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['flops_6nd']:.3g}", f"{r['flops_full']:.3g}",
                 f"{r['lr']:.2e}", f"{r['est_s']:.0f}s"]
        if plan.wsd:
            cells += [r["fork"] or "trains from step 0"]
        if plan.memory_planned:
            fits = "?" if plan.budget_gib is None else "yes" if r["mem_peak_gib"] <= plan.budget_gib else "NO"
            cells += [f"{r['mem_params_gib']:.2f}", f"{r['mem_opt_gib']:.2f}", f"{r['mem_temp_gib']:.2f}",
                      f"{r['mem_peak_gib']:.2f}", fits]
        table.add_row(*cells)
    return table


@app.command()
@user_errors
def sweep(
    spec_path: Path = typer.Argument(..., help="Sweep spec YAML (see experiments/)."),
    out_dir: Path = typer.Option(Path("runs"), "--out", "-o", help="Run store folder (shared storage when on a cluster)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the expanded plan; train nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster (e.g. auto, or ray://head:10001)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="Most runs at once (default: cluster CPUs / resources.cpus)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Give runs that used up their retries another go."),
    allow_large_grid: bool = typer.Option(False, "--allow-large-grid", help="Allow a grid of more than 2,000 runs (MEDSCALE_MAX_RUNS sets the limit)."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Dry run: plan each run's per-device memory (an AOT compile per distinct shape, cached)."),
) -> None:
    """Run a sweep grid on Ray: idempotent (finished runs are skipped) and resumable."""
    reporter = RichReporter()
    if dry_run:
        spec, runs = plan_sweep(spec_path, out_dir, reporter, allow_large_grid=allow_large_grid)
        RunStore(out_dir).refuse_changed_sweep(spec.name, runs)  # a changed schedule would pool two families
        plan = estimate_plan(runs, out_dir, spec.resources, memory=memory)
        if is_adaptive(spec):  # the pool, the first batch and the planned compute
            refuse_if_too_big(plan, runs, str(spec_path))
            _print_lines(dry_run_lines(spec, runs, out_dir, plan, source=str(spec_path)))
            return
        _print_wide(_plan_table(plan))
        refuse_if_too_big(plan, runs, str(spec_path))
        if plan.wsd:
            out.print(wsd_line(plan.wsd))
        out.print(f"estimated total: {plan.total_s / 60:.1f} device-minutes of training on this machine's "
                  f"{'device' if not (spec.resources.gpus or spec.resources.tpus) else 'device (the runs ask for accelerators, so expect far less there)'}")
        return
    spec, prepared = load_spec_and_data(spec_path, out_dir, reporter, allow_large_grid=allow_large_grid)
    runs = expand_over(spec, prepared, spec_path)
    RunStore(out_dir).refuse_changed_sweep(spec.name, runs)  # before launch_sweep writes the spec's copy
    if is_adaptive(spec):  # grid.mode adaptive: runs chosen batch by batch from the pool (scaling/sweep/adaptive.py)
        _print_lines(launch_adaptive_sweep(spec, runs, out_dir, address=address, max_concurrent=max_concurrent,
                                           retry_failed=retry_failed, reporter=reporter, source=str(spec_path)).lines())
        return
    launch_sweep(spec, runs, out_dir, address=address, max_concurrent=max_concurrent, retry_failed=retry_failed,
                 reporter=reporter)


@app.command()
@user_errors
def fit(
    table: Path = typer.Argument(..., help="CSV or parquet table of runs, from medscale or any other framework."),
    params: str = typer.Option(..., "--params", help="Column holding model size N (non-embedding parameters)."),
    loss: str = typer.Option(..., "--loss", help="Column holding the final (held-out) loss."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Column holding training tokens D."),
    compute: Optional[str] = typer.Option(None, "--compute", help="Column holding training FLOPs C; with no --tokens, D = C/(6N)."),
    approach: int = typer.Option(3, "--approach", min=1, max=3, help="1: envelope, 2: IsoFLOP profiles (groups by compute), 3: parametric L(N, D)."),
    budget_col: Optional[str] = typer.Option(None, "--budget-col", help="Column naming each run's IsoFLOP budget (default: group by compute)."),
    unique_tokens: Optional[str] = typer.Option(None, "--unique-tokens", help="Column of each run's unique training tokens U: fits the data-constrained law L(N, D, U) with R_star_D (Approach 3)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="FLOPs to allocate: adds `optimal` (N, D, epochs) to the output."),
    available_tokens: Optional[float] = typer.Option(None, "--available-tokens", help="Unique tokens available at --budget (repeat them or grow the model)."),
    compute_convention: str = typer.Option("auto", "--compute-convention", help="full: spend --budget on the full FLOP count (column --flops-col); 6nd: C = 6ND; auto (default): full when the table has --flops-col."),
    params_convention: Optional[str] = typer.Option(None, "--params-convention", help="total or non_embedding: take N from params_total / params_non_embedding instead of --params."),
    flops_col: str = typer.Option("flops_full", "--flops-col", help="Column of full training FLOPs (for --compute-convention full)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples over runs for the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    two_stage: bool = typer.Option(False, "--two-stage", help="With --unique-tokens: hold a base law L(N, D) fixed and fit only R_star_D and R_star_N (Muennighoff et al.'s procedure); the base is --base or a fit to the runs of one epoch or less."),
    base: Optional[str] = typer.Option(None, "--base", help="With --two-stage: the base law as E,A,B,alpha,beta (e.g. a published law: 1.87,520.8,1487.7,0.3527,0.3527)."),
    excess_params: bool = typer.Option(True, "--excess-params/--no-excess-params", help="With --unique-tokens: fit the parameter-excess term R_star_N (default) or leave it out."),
    predict: Optional[Path] = typer.Option(None, "--predict", help="CSV of planned runs (columns --params and --tokens or --compute, and --unique-tokens where used): the predicted loss of each with a 95% interval across law families (chinchilla, kaplan, farseer, data-constrained), weighted by their error on the costliest runs held out."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: every parameter as {value, interval}."),
) -> None:
    """Fit a scaling law to any table of runs."""
    if tokens is None and compute is None:
        raise UserError("give --tokens COL, --compute COL, or both")
    result = fit_table(_read_runs_table(table), params=params, loss=loss, tokens=tokens, compute=compute, approach=approach,
                       n_boot=n_boot, seed=seed, budget_col=budget_col, unique_tokens=unique_tokens,
                       budget=budget, available_tokens=available_tokens, compute_convention=compute_convention,
                       params_convention=params_convention, flops_col=flops_col, two_stage=two_stage,
                       base=_base_law(base), excess_params=excess_params)
    families = _planned_predictions(table, predict, params=params, loss=loss, tokens=tokens, compute=compute,
                                    unique_tokens=unique_tokens, n_boot=n_boot, seed=seed, budget=budget)
    if as_json:
        payload = result.to_dict()
        if families is not None:
            payload.update(families)
        print(json.dumps(payload, indent=2, allow_nan=False))
        return
    _print_lines(fit_lines(result, f"Approach {approach} fit of {table}") + _prediction_lines(families))


def _planned_predictions(table: Path, planned: Optional[Path], *, params, loss, tokens, compute, unique_tokens,
                         n_boot: int, seed: int, budget: Optional[float]) -> Optional[dict]:
    """--predict: the law families fitted to the same table, chosen by their error on its costliest runs, and
    each planned run's loss with an interval across families (analysis/selection.py); N_opt at --budget too."""
    if planned is None:
        return None
    if not planned.exists():
        raise UserError(f"--predict {planned}: no such file; give a CSV of planned runs with the columns "
                        f"{params!r} and {tokens or compute!r}")
    plan = read_table(planned)
    cols = [c for c in (params, tokens or compute, unique_tokens) if c]
    missing = [c for c in cols if c not in plan.columns]
    if missing or len(plan) == 0:
        raise UserError(f"--predict {planned}: " + (f"lacks column(s) {missing}; " if missing else "has no rows; ")
                        + f"planned runs need the columns {cols} (the same names as the fitted table)")
    target = planned_sizes(plan, params=params, tokens=tokens, compute=compute)  # validation aims at these runs
    choice = fit_families(_read_runs_table(table), params=params, loss=loss, tokens=tokens, compute=compute,
                          unique_tokens=unique_tokens, n_boot=min(n_boot, 200), seed=seed, n_jobs=1, target=target)
    out = choice.predict_planned(plan, params=params, tokens=tokens, compute=compute, unique_tokens=unique_tokens)
    preds = []
    for planned_row, row in zip(plan.to_dict(orient="records"), out.to_dict(orient="records")):
        rec = {k: _plain(v) for k, v in planned_row.items()}
        rec["loss"] = {"value": _plain(row["loss"]), "interval": [_plain(row["loss_low"]), _plain(row["loss_high"])]}
        rec["per_family"] = {k[5:]: _plain(v) for k, v in row.items() if k.startswith("loss_")
                             and k not in ("loss_low", "loss_high")}
        preds.append(rec)
    payload = {"predictions": preds, "families": choice.to_dict(),
               "prediction_warnings": list(out.attrs.get("warnings", [])),
               "prediction_interval": out.attrs.get("interval")}
    if budget is not None:
        payload["families_n_opt"] = choice.n_opt(budget).to_dict()
    return payload


def _prediction_lines(families: Optional[dict]) -> list[str]:
    if not families:
        return []
    weights = families["families"].get("weights", {})
    lines = ["planned runs (loss, 95% interval across law families weighted by their error on the costliest "
             "held-out runs: " + ", ".join(f"{k} {w:.2f}" for k, w in weights.items()) + ")"]
    for i, p in enumerate(families["predictions"]):
        lo, hi = p["loss"]["interval"]
        lines.append(f"  run {i + 1}: loss = {_num(p['loss']['value'])}   [{_num(lo)}, {_num(hi)}]")
    if families.get("families_n_opt"):
        n = families["families_n_opt"]
        lines.append(f"  N_opt across families = {_num(n['value'])}   [{_num(n['interval'][0])}, "
                     f"{_num(n['interval'][1])}]")
    lines += [f"  warning: {w}" for w in families.get("prediction_warnings", [])]
    if families.get("prediction_interval"):
        lines.append(f"  note: the interval covers {families['prediction_interval']}")
    return lines


def _base_law(text: Optional[str]) -> Optional[dict]:
    """--base E,A,B,alpha,beta -> a dict, or a UserError naming the option."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 5 or not all(v > 0 for v in values):
        raise UserError(f"--base {text!r}: give five positive numbers E,A,B,alpha,beta (for example "
                        "1.87,520.8,1487.7,0.3527,0.3527)")
    return dict(zip(("E", "A", "B", "alpha", "beta"), values))


PARAMETER_KEYS = ("E", "A", "B", "alpha", "beta", "R_star_D", "R_star_N", "a", "b", "G")


def _bound_note(mark, key: str) -> str:
    """What goes beside a value whose parameter sits at its optimisation bound (analysis/bounds.py): the bound,
    and for the parameter itself what that means."""
    if mark is None:
        return ""
    return f"   <- {short(mark, key)}" + (f": {mark.meaning}" if mark.parameter == key else "")


def fit_lines(result, heading: str) -> list[str]:
    """`medscale fit`'s text: every number from the same dict `--json` prints (FitResult.to_dict), each
    parameter at a bound named beside its value with what that means. Warnings start with '  warning: '."""
    payload = result.to_dict()
    flags = marks(at_bound(result.fit))
    lines = [f"{heading} ({payload.get('n_points')} points)"]
    for key in PARAMETER_KEYS:
        if isinstance(payload.get(key), dict):
            v = payload[key]
            lo, hi = v.get("interval") or (None, None)
            lines.append(f"  {key:>8} = {_num(v.get('value'))}   [{_num(lo)}, {_num(hi)}]{_bound_note(flags.get(key), key)}")
    ex = payload.get("extrapolation")
    if ex:
        what = f"budget {ex['budget']:.3g}" if ex.get("budget") else f"N {ex['params']:.3g}"
        parts = []
        if ex.get("n_opt") and ex["n_opt"].get("ratio"):
            parts.append(f"N_opt predicted/observed = {ex['n_opt']['ratio']:.3g}")
        if ex.get("loss"):
            parts.append(f"loss predicted - observed = {ex['loss']['difference']:+.4g}")
        lines.append(f"  extrapolation (fit without the largest {what}): " + ", ".join(parts))
    if payload.get("parabola", {}).get("a"):
        par = payload["parabola"]["a"]
        lo, hi = par["interval"]
        lines.append(f"  parabola a = {_num(par['value'])}   [{_num(lo)}, {_num(hi)}]   (the plain parabola over all "
                     "sizes, for comparison: biased where the profiles are asymmetric)")
    opt = payload.get("optimal")
    if opt:
        for key in ("N", "D", "epochs"):
            if opt.get(key):
                lo, hi = opt[key]["interval"]
                lines.append(f"  optimal {key:>6} = {_num(opt[key]['value'])}   [{_num(lo)}, {_num(hi)}]")
    for note in payload.get("notes", []) + (opt or {}).get("notes", []):
        lines.append(f"  note: {note}")
    for warning in payload.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return lines


def _print_lines(lines: list[str]) -> None:
    """Each line whole (a pipe gets no wrapping: see _Console); a '  warning: ' line in yellow on a terminal."""
    for line in lines:
        if line.startswith("  warning: "):
            out.print(f"  [yellow]warning:[/] {escape(line[len('  warning: '):])}", highlight=False)
        else:
            out.print(line, markup=False, highlight=False)


def _num(value) -> str:
    """A fitted number, or n/a where a degenerate fit has none (JSON null)."""
    return "n/a" if value is None else f"{value:.4g}"


def _read_runs_table(table: Path):
    """The table `medscale fit` was given, or a UserError saying why it cannot be one."""
    if not table.exists():
        raise UserError(f"{table}: no such file")
    if table.is_dir():
        raise UserError(f"{table} is a folder: give a CSV or parquet file of runs (e.g. RUNS_DIR/results.csv)")
    try:
        df = read_table(table)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{table}: cannot be read as a CSV table ({str(err).splitlines()[0][:200]}); give a CSV "
                        "with a header row, or a .parquet file") from None
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
        if table.suffix != ".parquet":
            raise
        raise UserError(f"{table}: cannot be read as parquet ({type(err).__name__}); give a parquet or CSV "
                        "file of runs") from None
    if df.empty:
        raise UserError(f"{table}: the table has no rows")
    return df


@app.command()
@user_errors
def analyze(
    runs_dir: Path = typer.Argument(..., help="The --out folder of one or more sweeps."),
    report_dir: Optional[Path] = typer.Option(None, "--report", help="Where to write the report (default: RUNS_DIR/report)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="FLOPs at which to recommend a compute-optimal size (default: 10x the largest run)."),
    max_tokens: Optional[float] = typer.Option(None, "--max-tokens", help="Unique tokens available (caps D in the recommendation)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples for intervals."),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="Processes for the fits' bootstraps and validation folds (default: $MEDSCALE_ANALYSIS_JOBS, else every core); the numbers do not depend on it."),
) -> None:
    """Fit a sweep's results, plot them and write an HTML report."""
    analyzed = analyze_store(runs_dir, report_dir=report_dir, budget=budget, max_tokens=max_tokens, n_boot=n_boot,
                             n_jobs=jobs)
    out.print(f"report: {analyzed.report}", markup=False, highlight=False)


@app.command()
@user_errors
def optimal(
    compute: float = typer.Option(..., "--compute", help="Training budget in FLOPs (see --compute-convention), e.g. 1e18."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help="Run store whose finished runs the law is fitted to."),
    objective: str = typer.Option("decoder", "--objective", help="decoder or encoder runs."),
    available_tokens: Optional[float] = typer.Option(None, "--available-tokens", "--max-tokens", help="Unique tokens available: with runs that record unique tokens, the law decides how many epochs to repeat them; otherwise D is capped."),
    compute_convention: str = typer.Option("full", "--compute-convention", help="full: the budget buys the full FLOP count the runs recorded (attention and head included); 6nd: C = 6ND."),
    spec_out: Optional[Path] = typer.Option(None, "--spec-out", help="Write a ready-to-run spec for the recommended run here."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for intervals."),
) -> None:
    """Compute-optimal model size and tokens for a budget, with intervals, a shape and a run spec."""
    if compute_convention not in ("full", "6nd"):
        raise UserError(f"--compute-convention {compute_convention!r}: choose full or 6nd")
    if not 0 < compute < float("inf"):
        raise UserError(f"--compute {compute:g}: give the training budget in FLOPs, a positive number (e.g. 1e18)")
    results, _ = load_results(runs_dir)
    sweeps = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((runs_dir / "sweeps").glob("*.yaml"))}
    rec = recommend(results, compute, objective=objective, max_tokens=available_tokens, n_boot=n_boot,
                    compute_convention=compute_convention, sweeps=sweeps, tokens_option="--available-tokens")
    print_recommendation(rec, compute)

    _print_lines(forecast_lines(runs_dir, rec, objective, n_boot))
    if spec_out:
        sweep = str(results.loc[results["objective"] == objective, "sweep"].mode().iloc[0]) if len(results) else None
        source = sweeps.get(sweep) or (next(iter(sweeps.values())) if sweeps else None)
        dataset = source["dataset"] if source else {"simulator": {"subjects": 4000, "seed": 0}}
        dataset = {k: v for k, v in dataset.items() if v is not None and k != "train_fraction"}  # all the data
        write_yaml(spec_out, run_spec(rec, name="compute-optimal", dataset=dataset, objective=objective))
        out.print(f"ready-to-run spec: {spec_out}  (medscale train {spec_out} --out DIR)")


def print_recommendation(rec: dict, compute: float) -> None:
    _print_lines(recommendation_lines(rec, compute))


def _law_words(law) -> str:
    fit = getattr(law, "fit", law)
    if getattr(fit, "law", None) == "data_constrained":
        return "the data-constrained law L(N, D, U)"
    return "Approach 3, L(N, D) = E + A/N^alpha + B/D^beta"


def recommendation_lines(rec: dict, compute: float) -> list[str]:
    """The recommendation as printed by `medscale optimal` and the demo: the allocation and shape of
    scaling/plan/recommend.py, and each parameter of its law that sits at a bound, with what that means."""
    a = rec["allocation"]
    shape = rec["shape"]
    fmt = lambda e: f"{e.value:.3g} [{_num3(e.low)}, {_num3(e.high)}]"  # noqa: E731
    law = rec["fit"]
    lines = [f"compute-optimal at C = {compute:.3g} FLOPs ({rec.get('compute_convention', '6nd')} count; "
             f"95% bootstrap intervals), from {_law_words(law)} fitted to {getattr(law, 'n_points', '?')} points:",
             f"  N_opt = {fmt(a.n_opt)} params ({rec['param_count'].replace('_', '-')} count)",
             f"  D_opt = {fmt(a.d_opt)} tokens"]
    if a.epochs is not None:
        lines.append(f"  epochs = {fmt(a.epochs)} over {a.max_tokens:.3g} unique tokens")
    lines.append(f"  tokens per parameter = {fmt(a.tokens_per_param)}")
    if a.loss is not None:
        lines.append(f"  predicted loss = {fmt(a.loss)}")
    lines.append(f"  shape: d_model {shape.d_model}, {shape.n_layers} layers, {shape.n_heads} heads, d_ff {shape.d_ff} "
                 f"({rec['params'].non_embedding:,} non-embedding, {rec['params'].total:,} total params); "
                 f"trained on {rec['tokens']:.4g} tokens (its own N at the budget)")
    lo, hi = rec["band"]
    lines.append(f"  sizes within 1% of the best predicted loss: {lo:.3g} to {hi:.3g} params")
    for b in at_bound(law):
        lines.append(f"  at a bound: {b.parameter} = {b.value:.3g} {b.label}: {b.meaning}")
    for note in list(a.notes) + list(rec.get("notes", [])):
        lines.append(f"  note: {note}")
    for warning in a.warnings:
        lines.append(f"  warning: {warning}")
    return lines


def _num3(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3g}"


@app.command()
@user_errors
def demo(
    out_dir: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Where the run store and report go; rerun to resume."),
    size: str = typer.Option("small", "--size", help="small: minutes on 2 cores; hours: a larger study on one machine; cluster: GPU/TPU scale via Ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Run the sweeps on an existing Ray cluster."),
    budget: Optional[float] = typer.Option(None, "--budget", help="FLOPs for the compute-optimal recommendation (default: 10x the largest run)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples for intervals."),
) -> None:
    """The whole study on the synthetic cohort: sweeps, downstream tasks, fits, report, recommendation."""
    result = run_demo(out_dir, size=size, address=address, budget=budget, n_boot=n_boot, reporter=RichReporter(),
                      say=lambda msg: console.print(f"[bold cyan]{escape(msg)}[/]", highlight=False))
    _print_lines(demo_lines(result))


def law_line(name: str, law) -> list[str]:
    """One line of a fitted law's parameters (value [interval]) from the fit object itself, as fits.json records
    it; a parameter at a bound is marked (recommendation_lines says what each such bound means)."""
    est = law.estimates
    flags = marks(at_bound(law))
    keys = [k for k in ("E", "alpha", "beta", "R_star_D", "R_star_N", "a", "b") if k in est]
    parts = [f"{k} = {est[k].value:.3g} [{_num3(est[k].low)}, {_num3(est[k].high)}]"
             + (f" ({short(flags[k], k)})" if k in flags else "") for k in keys]
    return [f"{name}, {_law_words(law)} ({getattr(law, 'n_points', '?')} points): " + ", ".join(parts)]


def demo_lines(result) -> list[str]:
    """What the demo prints at the end, every number from the objects the report was written from."""
    lines = law_line("decoder", result.recommendation["fit"])
    lines += recommendation_lines(result.recommendation, result.budget)
    lines += demo_summary(result.fits or {})
    lines += families_lines(result.fits, "decoder")
    lines += [f"report: {result.report}", f"demo finished in {result.minutes:.1f} min"]
    return lines


def demo_summary(fits: dict) -> list[str]:
    """From the report's fits (the dict written to fits.json, passed in memory): each objective's Approach 3
    allocation exponent, and the compute used."""
    lines = []
    for name, objective in fits.get("objectives", {}).items():
        a3 = objective.get("fits", {}).get("approach_3") or {}
        a = a3.get("a")
        if a and a.get("value") is not None:
            lo, hi = a["interval"]
            band = f" [{lo:.3g}, {hi:.3g}] (95%, width {hi - lo:.2f})" if lo is not None and hi is not None else ""
            bounds = [b for b in a3.get("at_bound", []) if b.get("where") == "estimate"]
            exp = next((b for b in bounds if b["parameter"] in ("alpha", "beta")), None)
            caveat = f" (not determined: {exp['parameter']} {exp['label']})" if exp else ""
            lines.append(f"{name}: Approach 3 N_opt ~ C^a, a = {a['value']:.3g}{band}{caveat}; {objective['n_runs']} runs")
            lines += [f"  {name} Approach 3: {b['parameter']} {b['label']}: {b['meaning']}" for b in bounds]
        else:
            why = (objective.get("not_fitted") or {}).get("approach_3", "not fitted")
            lines.append(f"{name}: Approach 3 not fitted: {why}")
    c = fits.get("compute")
    if c:
        lines.append(f"compute: {c['used_flops']:.3g} FLOPs trained ({c['convention']} count, {c['runs']} runs, "
                     f"{c['branches']} of them WSD cooldown branches); the same grid under cosine: "
                     f"{c['cosine_flops']:.3g} FLOPs ({c['ratio']:.2f}x)")
    return lines


@app.command()
@user_errors
def downstream(
    runs_dir: Path = typer.Argument(..., help="The --out folder of one or more sweeps."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="Downstream spec YAML (tasks, modes, seeds, label budgets; see experiments/downstream.yaml). Optional with --labels."),
    run_ids: Optional[list[str]] = typer.Option(None, "--run", help="Evaluate only these run ids (repeatable)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label folder in the MEDS label schema, one sub-folder per task (as ACES/MEDS-DEV write them); overrides the spec's labels: key."),
) -> None:
    """Evaluate finished runs on downstream tasks (probe, fine-tune, scratch, zero-shot, LightGBM, ceiling).
    Predictions go to RUNS/predictions/ in meds-evaluation's schema."""
    if spec_file is None and labels is None:
        raise UserError("give --spec FILE (tasks from task files) or --labels DIR (tasks from a label folder)")
    if spec_file is not None and not spec_file.exists():
        raise UserError(f"{spec_file}: no such downstream spec")
    try:
        if labels is None:
            spec = load_downstream_spec(spec_file, source=str(spec_file))
        else:   # the spec's keys (if any) with the label folder: its tasks name sub-folders of it
            import yaml

            raw = yaml.safe_load(spec_file.read_text()) if spec_file else {"modes": ["probe", "lightgbm"]}
            raw = raw.get("downstream", raw) if isinstance(raw, dict) else raw
            spec = load_downstream_spec({**raw, "labels": str(labels.resolve())}, source=str(spec_file or labels))
    except _user_error_types():
        raise   # they name the spec, the label folder or the task file already
    except ValueError as err:
        raise UserError(f"{spec_file or labels}: {err}") from None
    table = run_downstream(runs_dir, spec, runs=run_ids or None, reporter=RichReporter())
    _say_sources(table)


def _say_sources(table) -> None:
    """A note per task whose results in the store come from more than one label source."""
    for task, sources in mixed_sources(table).items():
        note = (f"task {task} has results from {len(sources)} label sources ({', '.join(sources)}: column labels "
                f"of downstream.csv); the report and its fits keep them apart as '{task} [<source>]'")
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A run folder: RUNS/runs/<run_id>."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for model.safetensors, config.json, vocab.json, tokenizer.json: new, empty, or an earlier export."),
    partial: bool = typer.Option(False, "--partial", help="Export a run that did not finish (its latest checkpoint); config.json records the step and finished: false."),
) -> None:
    """Export a run's parameters as safetensors, with its model config and tokenizer as JSON
    (load them back with medscale.scaling.run.export.load_exported)."""
    path, training = export_run(run_dir, out_dir, partial=partial)
    if not training["finished"]:
        console.print(f"[yellow]warning:[/] {escape(partial_warning(run_dir.name, training))}", highlight=False,
                      soft_wrap=True)
    state = "finished" if training["finished"] else "partial"
    out.print(f"exported {run_dir.name} (step {training['step']:,} of {training['steps']:,}, {state}) to {path} "
              "(model.safetensors, config.json, vocab.json, tokenizer.json)", highlight=False, soft_wrap=True)


# Commands kept in modules of their own (registered last: they import this module's error handling)
from medscale.scaling.design_cli import design_command  # noqa: E402
from medscale.scaling.meds_dev import app as _meds_dev_app  # noqa: E402
from medscale.scaling.predictions_report import predictions_report_command  # noqa: E402

app.add_typer(_meds_dev_app, name="meds-dev")
app.command("predictions-report")(predictions_report_command)
app.command("design")(design_command)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    app()


if __name__ == "__main__":
    main()
