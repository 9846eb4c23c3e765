"""The `medscale` command. Heavy imports (JAX, Ray) happen inside the commands that need them,
so `medscale fit` and `--help` stay fast and work without an accelerator stack.

A user's input error (bad YAML, malformed MEDS, impossible shape, too few points) prints one clear
message and exits with status 2; it never shows a traceback.
"""
from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from medscale.scaling.errors import UserError
from medscale.scaling.pipeline import Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="medscale: scaling-law studies for medical event foundation models.")
console = Console(stderr=True)
out = Console()


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medscale.analysis.errors import AnalysisError
    from medscale.data.meds import MedsError
    from medscale.data.tasks import TaskError
    from medscale.models.config import ShapeError
    from medscale.scaling.spec import SpecError

    return (SpecError, MedsError, ShapeError, AnalysisError, TaskError, UserError)


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_error_types() as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _progress_bar(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


class RichReporter(Reporter):
    """The pipeline's progress as rich progress bars and live sweep lines (one line per change in logs)."""

    def say(self, message: str) -> None:
        out.print(message, highlight=False)

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
        from rich.live import Live

        last: list[tuple] = [()]
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            def show(p):
                if console.is_terminal:
                    live.update(f"[bold]sweep {name}[/]: {p.line()}")
                elif (p.done, p.running, p.failed, p.diverged) != last[0]:  # logs: one line per change
                    last[0] = (p.done, p.running, p.failed, p.diverged)
                    console.print(f"sweep {name}: {p.line()}", highlight=False)

            yield show


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
    from medscale.data.simulator import generate_cohort

    t = time.time()
    with _progress_bar("generate") as progress:
        task = progress.add_task("simulating patients", total=subjects)
        path = generate_cohort(out_dir, subjects, seed, n_shards=shards, workers=workers,
                               progress=lambda done, total: progress.update(task, completed=done, total=total))
    out.print(f"wrote {subjects:,} subjects to {path} in {time.time() - t:.1f}s")


@app.command()
@user_errors
def tokenize(
    meds_dir: Path = typer.Argument(..., help="Root of a MEDS dataset (holding data/ and, optionally, metadata/)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for token shards, the tokenizer and manifest.json."),
    min_count: int = typer.Option(5, "--min-count", min=1, help="Codes seen fewer times in the train split become UNK."),
    value_bins: int = typer.Option(10, "--value-bins", min=1, max=100, help="Quantile bins per numeric code (10 = deciles)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel worker processes (default: number of cores)."),
) -> None:
    """Validate a MEDS dataset, fit the tokenizer on its train split and write token shards."""
    from medscale.data.token_store import tokenize_dataset
    from medscale.data.tokenizer import TokenizerConfig

    t = time.time()
    with _progress_bar("tokenize") as progress:
        task = progress.add_task("tokenizing shards", total=None)
        path = tokenize_dataset(meds_dir, out_dir, TokenizerConfig(min_count=min_count, n_value_bins=value_bins),
                                workers=workers,
                                progress=lambda done, total: progress.update(task, completed=done, total=total))
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    out.print(f"vocabulary {manifest['vocab_size']:,} tokens; wrote {path} in {time.time() - t:.1f}s")


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="A run config: a sweep spec whose grid holds exactly one point (see experiments/train_tiny.yaml)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run store folder; the run lands in OUT/runs/<hash>/. Rerun after a kill to resume."),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="CPU cores to pin this run to (default: the spec's resources.cpus)."),
) -> None:
    """Train (or resume) one run in this process."""
    from medscale.scaling.pipeline import train_one

    run, state = train_one(config, out_dir, cpus=cpus, log=lambda msg: console.print(f"  {msg}", highlight=False),
                           reporter=RichReporter())
    if state == "leased":
        raise UserError(f"run {run.run_id} is being trained by another live process ({run.lease_info()}); not starting it twice")
    metrics = run.metrics() or {}
    out.print(json.dumps({"run_id": run.run_id, "state": state, **{k: metrics.get(k) for k in (
        "loss", "params", "tokens", "compute", "flops_full", "tokens_per_sec", "mfu")}}, indent=2))
    if state == "diverged":
        raise typer.Exit(code=3)


def _plan_table(plan):
    from rich.table import Table

    table = Table(title=f"expanded plan: {len(plan.rows)} runs; time at {plan.efficiency:.1%} ({plan.efficiency_source}) "
                        f"of the peak {plan.peak_flops / 1e9:.1f} GFLOP/s ({plan.peak_source})")
    for col in ("run", "budget", "d_model x layers (heads)", "params (non-emb)", "tokens", "steps", "FLOPs 6ND",
                "FLOPs full", "lr", "est. time"):
        table.add_column(col, justify="right")
    for r in plan.rows:
        table.add_row(r["run"], f"{r['budget']:.3g}" if r["budget"] else "-", r["shape"], f"{r['params_non_embedding']:,}",
                      f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['flops_6nd']:.3g}", f"{r['flops_full']:.3g}",
                      f"{r['lr']:.2e}", f"{r['est_s']:.0f}s")
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
) -> None:
    """Run a sweep grid on Ray: idempotent (finished runs are skipped) and resumable."""
    from medscale.scaling.pipeline import estimate_plan, expand_over, launch_sweep, load_spec_and_data, plan_sweep

    reporter = RichReporter()
    if dry_run:
        spec, runs = plan_sweep(spec_path, out_dir, reporter)
        plan = estimate_plan(runs, out_dir)
        out.print(_plan_table(plan))
        out.print(f"estimated total: {plan.total_s / 60:.1f} device-minutes of training on this machine's "
                  f"{'device' if not (spec.resources.gpus or spec.resources.tpus) else 'device (the runs ask for accelerators, so expect far less there)'}")
        return
    spec, prepared = load_spec_and_data(spec_path, out_dir, reporter)
    runs = expand_over(spec, prepared, spec_path)
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
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples over runs for the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: every parameter as {value, interval}."),
) -> None:
    """Fit a scaling law to any table of runs."""
    from medscale.analysis import fit_table
    from medscale.analysis.errors import AnalysisError

    if tokens is None and compute is None:
        raise UserError("give --tokens COL, --compute COL, or both")
    if not table.exists():
        raise AnalysisError(f"{table}: no such file")
    result = fit_table(table, params=params, loss=loss, tokens=tokens, compute=compute, approach=approach,
                       n_boot=n_boot, seed=seed, budget_col=budget_col)
    if as_json:
        print(result.to_json())
        return
    payload = json.loads(result.to_json())
    out.print(f"Approach {approach} fit of {table} ({payload.get('n_points')} points)")
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
        if isinstance(payload.get(key), dict):
            v = payload[key]
            lo, hi = v["interval"]
            out.print(f"  {key:>6} = {v['value']:.4g}   [{lo:.4g}, {hi:.4g}]")
    for note in payload.get("notes", []):
        out.print(f"  note: {note}")
    for warning in payload.get("warnings", []):
        out.print(f"  [yellow]warning:[/] {warning}")


@app.command()
@user_errors
def analyze(
    runs_dir: Path = typer.Argument(..., help="The --out folder of one or more sweeps."),
    report_dir: Optional[Path] = typer.Option(None, "--report", help="Where to write the report (default: RUNS_DIR/report)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="FLOPs at which to recommend a compute-optimal size (default: 10x the largest run)."),
    max_tokens: Optional[float] = typer.Option(None, "--max-tokens", help="Unique tokens available (caps D in the recommendation)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples for intervals."),
) -> None:
    """Fit a sweep's results, plot them and write an HTML report."""
    from medscale.scaling.pipeline import analyze_store

    index = analyze_store(runs_dir, report_dir=report_dir, budget=budget, max_tokens=max_tokens, n_boot=n_boot)
    out.print(f"report: {index}")


@app.command()
@user_errors
def optimal(
    compute: float = typer.Option(..., "--compute", help="Training budget in FLOPs (6ND convention), e.g. 1e18."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help="Run store whose finished runs the law is fitted to."),
    objective: str = typer.Option("decoder", "--objective", help="decoder or encoder runs."),
    max_tokens: Optional[float] = typer.Option(None, "--max-tokens", help="Unique tokens available: caps D (medical data is often token-limited)."),
    spec_out: Optional[Path] = typer.Option(None, "--spec-out", help="Write a ready-to-run spec for the recommended run here."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="Bootstrap resamples for intervals."),
) -> None:
    """Compute-optimal model size and tokens for a budget, with intervals, a shape and a run spec."""
    import yaml

    from medscale.atomic import write_yaml
    from medscale.scaling.recommend import recommend, run_spec
    from medscale.scaling.results import load_results

    results, _ = load_results(runs_dir)
    rec = recommend(results, compute, objective=objective, max_tokens=max_tokens, n_boot=n_boot)
    print_recommendation(rec, compute)
    from medscale.scaling.downstream.forecast import forecast_lines

    for line in forecast_lines(runs_dir, rec, objective, n_boot):
        out.print(line)
    if spec_out:
        sweeps = sorted((runs_dir / "sweeps").glob("*.yaml"))
        dataset = yaml.safe_load(sweeps[0].read_text())["dataset"] if sweeps else {"simulator": {"subjects": 4000, "seed": 0}}
        dataset = {k: v for k, v in dataset.items() if v is not None}
        write_yaml(spec_out, run_spec(rec, name="compute-optimal", dataset=dataset, objective=objective))
        out.print(f"ready-to-run spec: {spec_out}  (medscale train {spec_out} --out DIR)")


def print_recommendation(rec: dict, compute: float) -> None:
    a = rec["allocation"]
    shape = rec["shape"]
    fmt = lambda e: f"{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]"  # noqa: E731
    out.print(f"compute-optimal at C = {compute:.3g} FLOPs (95% bootstrap intervals):")
    out.print(f"  N_opt = {fmt(a.n_opt)} params ({rec['param_count'].replace('_', '-')} count)")
    out.print(f"  D_opt = {fmt(a.d_opt)} tokens")
    out.print(f"  tokens per parameter = {fmt(a.tokens_per_param)}")
    if a.loss is not None:
        out.print(f"  predicted loss = {fmt(a.loss)}")
    out.print(f"  shape: d_model {shape.d_model}, {shape.n_layers} layers, {shape.n_heads} heads, d_ff {shape.d_ff} "
              f"({rec['params'].non_embedding:,} non-embedding, {rec['params'].total:,} total params)")
    for note in a.notes:
        out.print(f"  note: {note}")


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
    from medscale.scaling.demo import run_demo

    result = run_demo(out_dir, size=size, address=address, budget=budget, n_boot=n_boot, reporter=RichReporter(),
                      say=lambda msg: console.print(f"[bold cyan]{msg}[/]", highlight=False))
    fit_json = json.loads(result.recommendation["fit"].to_json())
    out.print("decoder L(N, D) = E + A/N^alpha + B/D^beta: " + ", ".join(
        f"{k} = {fit_json[k]['value']:.3g} [{fit_json[k]['interval'][0]:.3g}, {fit_json[k]['interval'][1]:.3g}]"
        for k in ("E", "alpha", "beta", "a", "b")))
    print_recommendation(result.recommendation, result.budget)
    out.print(f"report: {result.report}")
    out.print(f"demo finished in {result.minutes:.1f} min")


@app.command()
@user_errors
def downstream(
    runs_dir: Path = typer.Argument(..., help="The --out folder of one or more sweeps."),
    spec_file: Path = typer.Option(..., "--spec", help="Downstream spec YAML (tasks, modes, seeds, label budgets; see experiments/downstream.yaml)."),
    run_ids: Optional[list[str]] = typer.Option(None, "--run", help="Evaluate only these run ids (repeatable)."),
) -> None:
    """Evaluate finished runs on downstream tasks (probe, fine-tune, scratch, zero-shot, LightGBM, ceiling)."""
    from medscale.scaling.downstream import load_downstream_spec
    from medscale.scaling.pipeline import run_downstream

    if not spec_file.exists():
        raise UserError(f"{spec_file}: no such downstream spec")
    try:
        spec = load_downstream_spec(spec_file)
    except ValueError as err:
        raise UserError(f"{spec_file}: {err}") from None
    run_downstream(runs_dir, spec, runs=run_ids or None, reporter=RichReporter())


def main() -> None:
    from medscale.scaling.runtime import keep_freed_memory

    # before any thread (pyarrow's, Ray's, XLA's) exists, so that all of them share the setting
    keep_freed_memory()
    app()


if __name__ == "__main__":
    main()
