"""The demo: a small but real scaling study on the synthetic cohort, end to end.

    cohort -> tokens -> decoder IsoFLOP sweep -> encoder ladder -> downstream tasks -> fits -> report

Each stage is the same code path a user runs by hand (`medscale sweep`, `medscale analyze`, ...);
the presets only choose the specs in experiments/. Everything lands in one run store, so rerunning
the demo after an interruption resumes it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

PRESETS = {
    # name: (decoder spec, encoder spec, downstream evaluation spec or None)
    "small": ("demo_decoder_isoflop.yaml", "demo_encoder_ladder.yaml", "demo_downstream.yaml"),
    "hours": ("decoder_isoflop.yaml", "encoder_ladder.yaml", "downstream.yaml"),
    "cluster": ("cluster_decoder_isoflop.yaml", "cluster_encoder_ladder.yaml", "downstream.yaml"),
}


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
        raise FileNotFoundError(f"{path}: the demo's spec is missing; run from a medscale checkout")
    return path
