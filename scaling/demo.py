"""The demo: a small but real scaling study on the synthetic cohort, end to end.

    cohort -> tokens -> decoder IsoFLOP sweep -> data-constrained arm -> encoder ladder -> downstream tasks
           -> fits -> report

The data-constrained arm trains two decoders on a small fraction of the cohort for many epochs, so the
report can fit the value of a repeated token (R*_D) and the recommendation can say, for this cohort's
unique tokens, whether to repeat the data or grow the model.

The decoder sweep and the encoder ladder are WSD sweeps (scaling/sweep/wsd.py): each size trains once to its largest
budget and its smaller budgets are cooldown branches, so the decoder study spans two decades of compute and the
ladder has four budgets per size for about the compute of the cosine demo (docs/WSD.md).

Each stage is the same library call a user makes by hand (medscale.scaling.pipeline, behind `medscale
sweep`, `medscale downstream`, `medscale analyze`); the presets only choose the specs in experiments/.
Everything lands in one run store, so rerunning the demo after an interruption resumes it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medscale.analysis.bounds import at_bound, marks
from medscale.scaling.downstream import load_downstream_spec
from medscale.scaling.downstream.evaluate import downstream_data
from medscale.scaling.errors import UserError
from medscale.scaling.pipeline import (Reporter, analyze_store, expand_over, fit_store, launch_sweep,
                                       load_spec_and_data, run_downstream)
from medscale.scaling.plan.recommend import recommend
from medscale.scaling.sweep.dataset import prepare_dataset
from medscale.scaling.sweep.ray_session import ray_session
from medscale.scaling.sweep.results import load_results
from medscale.scaling.sweep.spec import expand, load_spec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

PRESETS = {
    # name: (decoder spec, encoder spec, downstream evaluation spec or None)
    "small": ("demo_decoder_isoflop.yaml", "demo_encoder_ladder.yaml", "demo_downstream.yaml"),
    "hours": ("decoder_isoflop.yaml", "encoder_ladder.yaml", "downstream.yaml"),
    "cluster": ("cluster_decoder_isoflop.yaml", "cluster_encoder_ladder.yaml", "downstream.yaml"),
}
# The data-constrained arm per preset (None: skipped). Its runs share the decoder sweep's prepared dataset.
DATA_CONSTRAINED = {"small": "demo_data_constrained.yaml", "hours": None, "cluster": None}


@dataclass
class Stage:
    name: str
    weight: float  # expected share of the wall time, refined as stages finish
    started: float | None = None
    finished: float | None = None


class StageClock:
    """Which stage is running and an estimate of the time left, from the stages' expected weights
    scaled by how long the finished ones actually took."""

    def __init__(self, stages: list[Stage], say: Callable[[str], None]):
        self.stages, self.say, self.t0 = stages, say, time.time()

    def start(self, name: str) -> None:
        stage = next(s for s in self.stages if s.name == name)
        stage.started = time.time()
        i = self.stages.index(stage) + 1
        self.say(f"[stage {i}/{len(self.stages)}] {name}   elapsed {self._fmt(time.time() - self.t0)}, "
                 f"left ~{self._fmt(self.eta())}")

    def finish(self, name: str) -> None:
        next(s for s in self.stages if s.name == name).finished = time.time()

    def eta(self) -> float | None:
        done = [s for s in self.stages if s.finished]
        if not done:
            return None
        spent = sum(s.finished - s.started for s in done)
        per_weight = spent / sum(s.weight for s in done)
        return per_weight * sum(s.weight for s in self.stages if not s.finished)

    @staticmethod
    def _fmt(seconds: float | None) -> str:
        if seconds is None:
            return "--"
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def spec_path(name: str) -> Path:
    path = EXPERIMENTS / name
    if not path.exists():
        raise UserError(f"{path}: the demo's spec is missing; run from a medscale checkout")
    return path


@dataclass
class DemoResult:
    report: Path
    budget: float
    recommendation: dict[str, Any]
    minutes: float
    data_constrained: dict[str, Any] | None = None  # the recommendation with the cohort's unique tokens
    fits: dict[str, Any] | None = None  # what the report's fits.json holds (the same dict, not read back)
    analysis: Any = None  # analysis.report.Analysis: the fits everything above was made from
    families: dict[str, Any] | None = None  # fits.json's law families for the decoder: N_opt across families


def run_demo(out_dir: Path | str, *, size: str = "small", address: str | None = None, budget: float | None = None,
             n_boot: int = 200, reporter: Reporter | None = None,
             say: Callable[[str], None] | None = None) -> DemoResult:
    """The whole demo study; rerun after an interruption to resume it."""

    if size not in PRESETS:
        raise UserError(f"--size {size!r}: choose one of {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    reporter = reporter or Reporter()
    decoder_name, encoder_name, downstream_name = PRESETS[size]
    arm_name = DATA_CONSTRAINED.get(size)
    stages = [Stage("prepare cohort and tokens", 1), Stage("decoder IsoFLOP sweep", 6)]
    stages += [Stage("data-constrained arm", 1.5)] if arm_name else []
    stages += [Stage("encoder ladder", 2), Stage("downstream tasks, and the fits beside them", 2.5),
               Stage("report", 0.5)]
    clock = StageClock(stages, say=say or reporter.say)
    t0 = time.time()

    clock.start("prepare cohort and tokens")
    decoder_path, encoder_path = spec_path(decoder_name), spec_path(encoder_name)
    decoder_spec, prepared = load_spec_and_data(decoder_path, out_dir, reporter)
    encoder_spec = load_spec(encoder_path)
    expand(encoder_spec, token_dir="", vocab_size=prepared.vocab_size, dataset_id="", source=str(encoder_path))
    clock.finish("prepare cohort and tokens")
    arms = [("decoder IsoFLOP sweep", decoder_spec, decoder_path)]
    if arm_name:
        arm_path = spec_path(arm_name)
        arm_spec = load_spec(arm_path)
        expand(arm_spec, token_dir="", vocab_size=prepared.vocab_size, dataset_id="", source=str(arm_path))
        arms.append(("data-constrained arm", arm_spec, arm_path))
    arms.append(("encoder ladder", encoder_spec, encoder_path))
    with ray_session(address):  # ends a local Ray (and its watcher) here, not at exit
        for stage, spec, path in arms:
            clock.start(stage)
            data = prepared if spec is decoder_spec else prepare_dataset(spec, out_dir)  # a no-op when shared
            launch_sweep(spec, expand_over(spec, data, path), out_dir, address=address, reporter=reporter)
            clock.finish(stage)
        clock.start("downstream tasks, and the fits beside them")
        # the laws need only the sweeps' results: their fits (numpy, in processes of their own) run while the
        # downstream models (JAX, here) are evaluated
        fits = _beside(fit_store, out_dir, budget=budget, n_boot=n_boot, n_jobs=None)
        downstream = _downstream(out_dir, downstream_name, reporter)
        analysis = fits()
        clock.finish("downstream tasks, and the fits beside them")

    clock.start("report")
    # `medscale analyze`'s own path: each law fitted once; the report, the recommendation and what the CLI
    # prints are all made from those fits
    analyzed = analyze_store(out_dir, report_dir=out_dir / "report", budget=budget, n_boot=n_boot,
                             title=f"medscale demo ({size})", downstream=downstream, analysis=analysis)
    rec = analyzed.recommendation("decoder")
    constrained = _data_constrained_effect(analyzed, out_dir, say or reporter.say) if arm_name else None
    clock.finish("report")
    return DemoResult(analyzed.report, analyzed.budget, rec, (time.time() - t0) / 60, constrained,
                      fits=analyzed.fits, analysis=analyzed.analysis,
                      families=(analyzed.fits or {}).get("objectives", {}).get("decoder", {}).get("families"))


def _beside(fn: Callable, *args, **kwargs) -> Callable[[], Any]:
    """fn(*args, **kwargs) started in a daemon thread; returns a call that waits for its result (or raises its
    error). A daemon: an interrupted demo does not wait for it at exit."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name=f"medscale-{fn.__name__}", daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def families_lines(fits: dict | None, objective: str = "decoder") -> list[str]:
    """The recommendation's uncertainty across law families, from the report's fits (the dict fits.json holds):
    N_opt at the budget from the families weighted by their error on held-out costlier runs, and the warnings
    when they disagree beyond their own intervals or a family has no optimum inside the search range."""
    fam = ((fits or {}).get("objectives", {}).get(objective) or {}).get("families") or {}
    if fam.get("not_fitted"):
        return [f"{objective}: law families not fitted: {fam['not_fitted']}"]
    n = fam.get("n_opt")
    if not n or n.get("value") is None:
        return []
    lo, hi = (f"{v:.3g}" if v is not None else "n/a" for v in n["interval"])
    weights = ", ".join(f"{k} {w:.2f}" for k, w in fam["weights"].items())
    count = "full" if fam.get("compute_convention") == "full" else "6ND"
    lines = [f"{objective} across law families (weights from their error on held-out costlier runs: {weights}; "
             f"chosen {fam['chosen']}): N_opt at {fam['budget']:.3g} FLOPs = {n['value']:.3g} [{lo}, {hi}] params "
             f"({count} FLOP count)"]
    return lines + [f"  warning: {w}" for w in n.get("warnings", [])]


def _data_constrained_effect(analyzed, out_dir: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The recommendation when the cohort's unique tokens are all there is, against unlimited data: the
    report's data-constrained law and allocations (the same objects), not a refit."""
    fits = analyzed.analysis.objectives.get("decoder")
    if fits is None or fits.data_constrained is None:
        if fits is not None and fits.dc_error:
            say(f"data-constrained law not fitted: {fits.dc_error}")
        return None
    cohort = fits.dc_tokens  # the whole train split: what this hospital has
    a, free, r = fits.dc_alloc, fits.dc_free, fits.data_constrained.estimates["R_star_D"]
    mark = marks(at_bound(fits.data_constrained)).get("R_star_D")
    flag = f" ({mark.label}: {mark.meaning})" if mark is not None else ""
    say(f"data-constrained: R*_D = {r.value:.3g} [{r.low:.3g}, {r.high:.3g}] epochs{flag}; with the cohort's {cohort:.3g} "
        f"unique tokens at {analyzed.budget:.3g} FLOPs: N = {a.n_opt.value:.3g} for {a.epochs.value:.3g} epochs "
        f"(unlimited data: N = {free.n_opt.value:.3g}; {a.compute_convention} FLOP count)")
    results, _ = load_results(out_dir)
    return recommend(results, analyzed.budget, objective="decoder", max_tokens=cohort, law=fits.data_constrained,
                     flops_per_token=fits.fpt)


def _downstream(out_dir: Path, spec_name: str, reporter: Reporter):
    """Downstream evaluation of the demo's models, in the report's format: one model per size (the
    encoder ladder's longest runs, and the decoders of the largest IsoFLOP budget)."""
    results, _ = load_results(out_dir)
    done = results[results["status"] == "done"]
    decoders = done[(done["objective"] == "decoder") & (done["budget"] == done["budget"].max())]
    encoders = done[done["objective"] == "encoder"]
    encoders = encoders[encoders["target_tokens"] == encoders["target_tokens"].max()]  # a ladder's longest runs
    runs = list(decoders["run_id"]) + list(encoders["run_id"])
    table = run_downstream(out_dir, load_downstream_spec(spec_path(spec_name)), runs=runs, reporter=reporter)
    return downstream_data(out_dir, table) if len(table) else None
