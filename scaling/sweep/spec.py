"""YAML sweep specs: validation with errors that name the key, the value and what is allowed,
and expansion into resolved run configs (each of which hashes to its run folder).

    name: decoder-isoflop
    objective: decoder                 # decoder (next event) | encoder (masked event)
    dataset:
      simulator: {subjects: 4000, seed: 0}   # or   meds: /path/to/meds_root
      tokenizer: {min_count: 5, value_bins: 10}
    model: {seq_len: 128}
    grid:
      mode: isoflop                    # isoflop: compute x params, tokens = C / (6N)
      compute: [1e13, 3e13, 1e14]      # ladder:  params x tokens
      params: [50k, 100k, 200k, 400k]  # non-embedding parameter targets (or explicit shapes)
      tokens_per_param: [2, 200]       # isoflop, optional: run only the points with D/N in [min, max]
    seeds: [0]
    optimizer: {batch_size: 16, lr: 3e-3, lr_scaling: inverse_width, base_width: 128,
                lr_multipliers: [1.0]}
    resources: {cpus: 1}
    eval: {n_evals: 8, batches: 4}
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator,
                      model_serializer, model_validator)

from medscale.analysis.conventions import tokens_for_compute
from medscale.analysis.design import AT_BOUNDS, SCORING, SCORINGS
from medscale.models.config import ModelConfig, ShapeError, counted_params, d_ff_for, shape_for
from medscale.models.options import ModelOptions, mesh_axes
from medscale.scaling.downstream.spec import DownstreamSpec
from medscale.scaling.run.run_config import (CheckpointConfig, DataConfig, EvalConfig, RunConfig, TrainConfig,
                                             steps_for_tokens)
from medscale.scaling.sweep.step_dir import identity_hash
from medscale.scaling.sweep.store import config_hash
from medscale.scaling.sweep.wsd import trunks_and_branches

MIN_STEPS = 10
MAX_RUNS = 2000  # a grid larger than this needs max_runs=None (`--allow-large-grid`); MEDSCALE_MAX_RUNS overrides
SHOWN_CHARS = 120  # a rejected value is shown up to this many characters
_SUFFIX = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "b": 1e9, "B": 1e9, "g": 1e9, "G": 1e9, "t": 1e12, "T": 1e12}


class SpecError(ValueError):
    """A sweep spec that cannot run; the message names the file, key, value and what is allowed."""


def parse_quantity(value: Any) -> float:
    """100k, 1.5M, 2e13, 3B -> float. YAML reads `1e13` as a string, so strings are accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number like 1e13 or 100k, got {value!r}")
    if isinstance(value, int):
        value = float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", value)
        if m:
            value = float(m.group(1)) * _SUFFIX.get(m.group(2), 1.0)
    if isinstance(value, float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a positive number, got {value!r}")
        return value
    raise ValueError(f"expected a number like 1e13, 100k or 2.5M, got {value!r}")


Quantity = float


def _real(value: Any) -> Any:
    """A real number: int or float (YAML reads `3e-3` as a string, so numeric strings too), never a bool."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {shorten(repr(value))}") from None
    return value


# YAML `true` must not become 1, nor `16.5` a batch of 16: integers are strict, reals take numbers only
Int = Annotated[int, Strict()]
Real = Annotated[float, BeforeValidator(_real)]


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulatorSpec(_Strict):
    subjects: Int = Field(gt=0)
    seed: Int = 0


class TokenizerSpec(_Strict):
    """`dataset.tokenizer`: how events become tokens (data/tokenizer.py). Part of the dataset's identity.

    Keys added after the first release (NEWER_KEYS) enter the identity only when set to something other
    than their default, so a spec written before them keeps its dataset hash (and its prepared folder).
    """
    min_count: Int = Field(5, ge=1)
    value_bins: Union[Int, Literal["none"]] = Field(10, description="quantile bins per numeric code; none/0: no value tokens")
    time_scheme: Literal["bins", "interval"] = "bins"
    values: Literal["separate", "fused"] = "separate"
    demographics: bool = True

    NEWER_KEYS: ClassVar[tuple[str, ...]] = ("time_scheme", "values", "demographics")

    @field_validator("value_bins")
    @classmethod
    def _bins(cls, v):
        v = 0 if v == "none" else v
        if not 0 <= v <= 100:
            raise ValueError(f"value_bins must be 1..100, or none (0) for no value tokens, got {v}")
        return v

    @model_serializer(mode="wrap")
    def _identity_dump(self, handler):
        dumped = handler(self)
        for key in self.NEWER_KEYS:
            if key in dumped and dumped[key] == type(self).model_fields[key].default:
                del dumped[key]
        return dumped

    def to_config(self):
        from medscale.data.tokenizer import TokenizerConfig

        return TokenizerConfig(min_count=self.min_count, n_value_bins=self.value_bins, time_scheme=self.time_scheme,
                               value_scheme=self.values, demographics=self.demographics)


class DatasetSpec(_Strict):
    simulator: SimulatorSpec | None = None
    meds: str | None = None
    tokenizer: TokenizerSpec = TokenizerSpec()
    # Share of the train subjects a run draws its windows from (a fixed random subset, nested across
    # fractions); a list makes it a sweep axis, to measure repeated data. Not part of the prepared dataset:
    # every fraction trains on the same tokens and tokenizer, so vocabularies and shapes stay comparable.
    train_fraction: Union[float, list[float]] = 1.0

    @field_validator("train_fraction")
    @classmethod
    def _fractions(cls, v):
        values = v if isinstance(v, list) else [v]
        if not values or any(not 0 < f <= 1 for f in values):
            raise ValueError(f"every train_fraction must be in (0, 1], got {v}")
        if isinstance(v, list) and len(set(values)) != len(values):
            raise ValueError(f"train_fraction lists a value twice: {v}")
        return v

    def fractions(self) -> list[float]:
        return list(self.train_fraction) if isinstance(self.train_fraction, list) else [self.train_fraction]

    @model_validator(mode="after")
    def one_source(self) -> "DatasetSpec":
        if (self.simulator is None) == (self.meds is None):
            raise ValueError("give exactly one of dataset.simulator (synthetic cohort) or dataset.meds (a MEDS root)")
        return self

    def identity(self) -> dict:
        return self.model_dump(exclude={"train_fraction"})


class ExplicitShape(_Strict):
    d_model: Int
    n_layers: Int
    n_heads: Int
    d_ff: Int | None = None


class ModelSpec(_Strict):
    seq_len: Int = Field(128, gt=1)
    max_len: Int | None = None
    # Which parameters N counts, for grid sizes, IsoFLOP tokens (D = C / 6N) and the fits. Kaplan counts
    # non-embedding parameters; at small scale, where embeddings and the output head are much of the model,
    # counting them (as Chinchilla does) matches compute better (Pearce & Song 2024).
    param_count: Literal["non_embedding", "total"] = "non_embedding"
    # How the model is computed (models/options.py): memory and speed, not results (dtype aside)
    attention: Literal["auto", "xla", "flash"] = "auto"
    remat: Literal["none", "dots", "full"] = "none"
    scan_layers: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


def _each(v: Any, parse) -> Any:
    if not isinstance(v, list):
        return v
    parsed = []
    for i, x in enumerate(v):
        try:
            parsed.append(parse(x))
        except ValueError as err:
            raise ValueError(f"item [{i}]: {err}") from None
    return parsed


def _quantities(v: Any) -> Any:
    return _each(v, parse_quantity)


def _sizes(v: Any) -> Any:
    return _each(v, lambda x: x if isinstance(x, dict) else parse_quantity(x))


class LadderGrid(_Strict):
    mode: Literal["ladder"]
    params: list[Union[Quantity, ExplicitShape]] = Field(min_length=1)
    tokens: list[Quantity] = Field(min_length=1)

    _parse_tokens = field_validator("tokens", mode="before")(_quantities)
    _parse_params = field_validator("params", mode="before")(_sizes)


class IsoFlopGrid(_Strict):
    mode: Literal["isoflop"]
    compute: list[Quantity] = Field(min_length=1)
    params: list[Union[Quantity, ExplicitShape]] = Field(min_length=2)
    # [min, max] tokens per parameter (D/N, N as model.param_count counts it): only the (size, budget) points
    # inside are run, so each budget spans the sizes around its optimum (over two decades of compute one list
    # of sizes cannot suit every budget) and, under WSD, a size's trunk stops at its largest kept budget
    tokens_per_param: Optional[list[Real]] = None

    _parse_compute = field_validator("compute", mode="before")(_quantities)
    _parse_params = field_validator("params", mode="before")(_sizes)

    @field_validator("tokens_per_param")
    @classmethod
    def _window(cls, v):
        if v is not None and (len(v) != 2 or not 0 < v[0] < v[1]):
            raise ValueError(f"give [min, max] with 0 < min < max, got {v}")
        return v


class AdaptiveTargetRun(_Strict):
    params: Quantity  # N as model.param_count counts it
    tokens: Quantity

    _parse = field_validator("params", "tokens", mode="before")(parse_quantity)


class AdaptiveTarget(_Strict):
    """What an adaptive sweep pins down: N_opt at a compute C (6ND FLOPs), or the loss of planned runs."""
    n_opt_at: Optional[Quantity] = None
    planned: Optional[list[AdaptiveTargetRun]] = Field(None, min_length=1)

    _parse = field_validator("n_opt_at", mode="before")(lambda v: None if v is None else parse_quantity(v))

    @model_validator(mode="after")
    def _one(self) -> "AdaptiveTarget":
        if (self.n_opt_at is None) == (self.planned is None):
            raise ValueError("give exactly one of grid.target.n_opt_at (a compute C in 6ND FLOPs: the target is "
                             "N_opt there) or grid.target.planned (a list of {params, tokens}: their losses)")
        return self


class AdaptiveGrid(_Strict):
    """A candidate pool (params x tokens, as a ladder; or compute x params, as an IsoFLOP grid) from which
    scaling/sweep/adaptive.py runs an initial design, then batch after batch by the expected reduction of the
    target's error per FLOP, until `budget` FLOPs are spent or the interval's relative width is `stop_width`.
    `scoring` is analysis/design.py's (default SCORING). With several dataset.train_fraction values the pool is
    params x tokens x fractions and the law the data-constrained one (scaling/sweep/adaptive.py)."""
    mode: Literal["adaptive"]
    params: list[Union[Quantity, ExplicitShape]] = Field(min_length=3)
    tokens: Optional[list[Quantity]] = Field(None, min_length=3)
    compute: Optional[list[Quantity]] = Field(None, min_length=1)
    tokens_per_param: Optional[list[Real]] = None
    budget: Quantity  # FLOPs to spend, counted as the scheduler counts them (full count; a WSD branch its cooldown)
    target: AdaptiveTarget
    stop_width: Optional[Real] = Field(None, gt=0)
    batch: Int = Field(2, ge=1)
    initial: Int = Field(7, ge=6)
    seed: Int = 0
    n_boot: Int = Field(100, ge=20)
    scoring: str = SCORING
    at_bound: Optional[str] = None  # analysis/design.py AT_BOUNDS; None: its default for the scoring

    _parse_tokens = field_validator("tokens", "compute", mode="before")(_quantities)
    _parse_params = field_validator("params", mode="before")(_sizes)
    _parse_budget = field_validator("budget", mode="before")(parse_quantity)
    _window = field_validator("tokens_per_param")(lambda v: IsoFlopGrid._window(v))

    @field_validator("scoring")
    @classmethod
    def _scoring(cls, v: str) -> str:
        if v not in SCORINGS:
            raise ValueError(f"give one of {', '.join(SCORINGS)} (analysis/design.py; docs/SCIENCE.md, \"Adaptive "
                             f"designs\"), or leave it out for {SCORING}")
        return v

    @field_validator("at_bound")
    @classmethod
    def _at_bound(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in AT_BOUNDS:
            raise ValueError(f"give one of {', '.join(AT_BOUNDS)} (what chooses a batch while the fitted law has a "
                             "parameter at its bound: docs/SCIENCE.md, \"Adaptive designs\"), or leave it out for "
                             "the scoring's default")
        return v

    @model_validator(mode="after")
    def _one_pool(self) -> "AdaptiveGrid":
        if (self.tokens is None) == (self.compute is None):
            raise ValueError("give exactly one of grid.tokens (a ladder pool: params x tokens) or grid.compute "
                             "(an IsoFLOP pool: compute x params, tokens = C / 6N)")
        if self.tokens_per_param is not None and self.compute is None:
            raise ValueError("grid.tokens_per_param applies to an IsoFLOP pool (grid.compute); remove it or give "
                             "grid.compute instead of grid.tokens")
        return self

    def check_with(self, spec: "SweepSpec", source: str) -> None:
        """What the pool's runs must share to be fitted as one law (SpecError naming the key)."""
        if len(spec.optimizer.lr_multipliers) > 1:
            raise SpecError(f"{source}: optimizer.lr_multipliers: an adaptive grid fits one law to the runs it "
                            f"chooses, so its runs share one learning rate; give one multiplier (got "
                            f"{spec.optimizer.lr_multipliers}), or sweep learning rates with a ladder or isoflop grid")

    def pool_grid(self) -> Union[LadderGrid, IsoFlopGrid]:
        """The candidate pool as the grid it is made of (expanded by the same code, so with the same run ids)."""
        if self.tokens is not None:
            return LadderGrid.model_construct(mode="ladder", params=self.params, tokens=self.tokens)
        return IsoFlopGrid.model_construct(mode="isoflop", compute=self.compute, params=self.params,
                                           tokens_per_param=self.tokens_per_param)


class OptimizerSpec(_Strict):
    batch_size: Int = Field(16, gt=0)
    lr: Real = Field(3e-3, gt=0, lt=1)
    lr_scaling: Literal["constant", "inverse_width"] = "inverse_width"
    base_width: Int = Field(128, gt=0)
    lr_multipliers: list[Real] = Field(default_factory=lambda: [1.0], min_length=1)
    warmup_fraction: Real = Field(0.05, ge=0, lt=1)
    min_lr_ratio: Real = Field(0.1, ge=0, le=1)
    weight_decay: Real = Field(0.1, ge=0)
    b1: Real = Field(0.9, ge=0, lt=1)
    b2: Real = Field(0.95, ge=0, lt=1)
    clip: Real = Field(1.0, gt=0)
    microbatches: Int = Field(1, ge=1, description="gradient accumulation: each step's batch in this many slices")
    # cosine: warmup then cosine decay to each run's end. wsd: warmup, constant, then a cooldown over the
    # last cooldown_fraction of the steps (shape linear or 1-sqrt, Hägele et al. 2024); the sweep trains one
    # trunk per (size, lr, seed) and forks each shorter budget's cooldown from it (scaling/sweep/wsd.py).
    schedule: Literal["cosine", "wsd"] = "cosine"
    cooldown_fraction: Real = Field(0.2, gt=0, le=1)
    cooldown_shape: Literal["linear", "1-sqrt"] = "linear"

    @model_validator(mode="after")
    def _phases_fit(self) -> "OptimizerSpec":
        if self.schedule == "wsd" and self.warmup_fraction + self.cooldown_fraction >= 1:
            raise ValueError(f"optimizer.cooldown_fraction {self.cooldown_fraction} plus optimizer.warmup_fraction "
                             f"{self.warmup_fraction} must be below 1 (the stable phase lies between them)")
        return self

    @field_validator("lr_multipliers")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v):
            raise ValueError(f"every learning-rate multiplier must be > 0, got {v}")
        return v

    def lr_for(self, d_model: int, multiplier: float) -> float:
        scale = self.base_width / d_model if self.lr_scaling == "inverse_width" else 1.0
        return self.lr * scale * multiplier


class MeshSpec(_Strict):
    """Device mesh of one run (models/sharding.py): -1 (or, for data, omitted) takes the remaining devices."""
    data: int | None = None
    fsdp: int | None = None
    tensor: int | None = None

    def requested(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ResourcesSpec(_Strict):
    cpus: Int = Field(1, ge=1)
    gpus: Real = Field(0, ge=0)
    tpus: Int = Field(0, ge=0)
    host_devices: Int | None = Field(None, ge=1, description="CPU only: XLA host devices per run (default: cpus)")
    hosts: Int = Field(1, ge=1, description="processes (hosts) per run; cpus/gpus/tpus/host_devices are per host")
    mesh: MeshSpec | None = None
    device_memory_gb: Real | None = Field(None, gt=0, description="memory of one device (default: accelerator's)")
    accelerator: str | None = Field(None, description="e.g. h100, a100-40gb, tpu-v5e: the device memory budget")

    def devices_per_run(self) -> int:
        """The devices one run sees, over all its processes: GPUs, TPU chips or XLA host devices per host,
        times `hosts`."""
        if self.gpus:
            per_host = max(1, int(self.gpus))
        elif self.tpus:
            per_host = self.tpus
        else:
            per_host = self.host_devices or self.cpus
        return per_host * self.hosts


class EvalSpec(_Strict):
    n_evals: Int = Field(8, ge=1)
    batches: Int = Field(4, ge=1)
    split: Literal["tuning", "held_out"] = "tuning"


class CheckpointSpec(_Strict):
    every_steps: Int = Field(100, ge=1)
    every_minutes: Real | None = Field(None, gt=0, description="also checkpoint after this much training time")
    grace_seconds: Real = Field(25.0, gt=0, description="after SIGTERM, checkpoint and exit within this time")


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    objective: Literal["decoder", "encoder"]
    dataset: DatasetSpec
    model: ModelSpec = ModelSpec()
    grid: Union[LadderGrid, IsoFlopGrid, AdaptiveGrid] = Field(discriminator="mode")
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1)
    optimizer: OptimizerSpec = OptimizerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    retries: Int = Field(2, ge=0, le=20)
    mask_prob: Real = Field(0.15, gt=0, lt=1)
    downstream: DownstreamSpec | None = None  # tasks evaluated on every finished run of this sweep

    def model_options(self) -> dict:
        """The run config's `options`: the non-default ways of computing (models/options.py)."""
        m = self.model
        return ModelOptions(attention=m.attention, remat=m.remat, scan_layers=m.scan_layers, dtype=m.dtype,
                            microbatches=self.optimizer.microbatches).validate().to_dict()

    def mesh_config(self) -> dict | None:
        """The run config's `mesh`, or None (the default: data parallel over every device)."""
        return None if self.resources.mesh is None else self.resources.mesh.requested()


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: the sweep spec is invalid ({err.error_count()} problem(s)); nothing was launched."]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("ladder", "isoflop", "adaptive")))
        got = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the allowed keys in experiments/README.md)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        shown = "" if e["type"] == "missing" else f" (got {shorten(repr(got))})" if not isinstance(got, dict) else ""
        lines.append(f"  - {loc or '<top>'}: {shorten(msg, 4 * SHOWN_CHARS)}{shown}")
        if len(lines) > 20:
            lines.append(f"  ... and {err.error_count() - 20} more")
            break
    return "\n".join(lines)


class SpecLoader(yaml.SafeLoader):
    """Safe YAML that refuses what silently changes a spec or blows up: a repeated key (the last would
    win) and aliases (`*name`) that expand to more than MAX_ALIAS_NODES values (a few lines of nested
    aliases expand to billions, the "billion laughs"). Ordinary anchors and aliases, as yaml.dump
    writes them for shared values, load as usual."""

    MAX_ALIAS_NODES = 10_000

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self.anchors:
                self._expanded = getattr(self, "_expanded", 0) + self._size(self.anchors[event.anchor])
                if self._expanded > self.MAX_ALIAS_NODES:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"aliases (*name) expand to more than {self.MAX_ALIAS_NODES:,} values "
                        "(nested aliases, a 'billion laughs'?): write the values out", event.start_mark)
        return super().compose_node(parent, index)

    def _size(self, node) -> int:
        """Values in a composed node, aliases counted as often as they are used (memoised per node)."""
        sizes = self.__dict__.setdefault("_sizes", {})
        if id(node) not in sizes:
            if isinstance(node, yaml.SequenceNode):
                sizes[id(node)] = 1 + sum(self._size(child) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                sizes[id(node)] = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                sizes[id(node)] = 1
        return sizes[id(node)]

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable: the base class reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shorten(repr(key))} appears twice (first at line {first + 1}); "
                    "keep one (YAML would silently use the last)", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "spec") -> Any:
    """Parse a YAML file with SpecLoader; every problem is a SpecError naming the file and line."""
    if path.is_dir():
        raise SpecError(f"{path} is a folder: give the {what} YAML file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file: give the {what} YAML file") from None
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {shorten(str(getattr(err, 'problem', err)), 400)}") from None


def load_spec(path: str | Path, *, max_runs: int | None = MAX_RUNS) -> SweepSpec:
    """Read and validate a sweep spec. A relative `dataset.meds` is relative to the spec file's folder.
    A grid of more than `max_runs` runs is refused (None: no limit)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such sweep spec file")
    spec = parse_spec(read_yaml(path), source=str(path), base_dir=path.parent)
    check_grid_size(spec, max_runs, str(path))
    return spec


def grid_size(spec: "SweepSpec") -> int:
    """How many runs the grid expands to (counted, not expanded); an adaptive grid: its candidate pool."""
    grid = spec.grid.pool_grid() if isinstance(spec.grid, AdaptiveGrid) else spec.grid
    budgets = grid.tokens if isinstance(grid, LadderGrid) else grid.compute
    return (len(grid.params) * len(budgets) * len(spec.seeds) * len(spec.optimizer.lr_multipliers)
            * len(spec.dataset.fractions()))


def check_grid_size(spec: "SweepSpec", max_runs: int | None, source: str) -> None:
    if max_runs is None:
        return
    max_runs = int(os.environ.get("MEDSCALE_MAX_RUNS", max_runs))
    n = grid_size(spec)
    if n > max_runs:
        grid = spec.grid.pool_grid() if isinstance(spec.grid, AdaptiveGrid) else spec.grid
        budgets = ("tokens", grid.tokens) if isinstance(grid, LadderGrid) else ("compute", grid.compute)
        raise SpecError(
            f"{source}: the grid expands to {n:,} runs (grid.params {len(grid.params)} x grid.{budgets[0]} "
            f"{len(budgets[1])} x seeds {len(spec.seeds)} x optimizer.lr_multipliers "
            f"{len(spec.optimizer.lr_multipliers)} x dataset.train_fraction {len(spec.dataset.fractions())}), more "
            f"than {max_runs:,}. If that is intended, pass "
            "--allow-large-grid; otherwise check the lists for a mistake.")


def parse_spec(raw: Any, *, source: str = "<spec>", base_dir: Path | None = None) -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep spec is a YAML mapping (name:, objective:, dataset:, grid:, ...), "
                        f"got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_error(source, err)) from None
    if spec.dataset.meds is not None:
        # one meaning wherever it is launched from: relative to the spec file (to the working
        # directory only for a spec given as a dict without base_dir)
        meds = Path(spec.dataset.meds).expanduser()
        if not meds.is_absolute():
            meds = (base_dir if base_dir is not None else Path.cwd()) / meds
        if not meds.exists():
            raise SpecError(f"{source}: dataset.meds: {shorten(repr(spec.dataset.meds))} does not exist (a relative path "
                            f"is relative to the spec's folder: {meds}); give the root folder of a MEDS dataset "
                            "(holding data/ and metadata/)")
        spec.dataset.meds = str(meds.resolve())
    return spec


def _shape(spec: SweepSpec, entry: Union[float, ExplicitShape], vocab_size: int, source: str, key: str) -> ModelConfig:
    causal = spec.objective == "decoder"
    max_len = spec.model.max_len or spec.model.seq_len
    try:
        if isinstance(entry, ExplicitShape):
            d_ff = entry.d_ff or d_ff_for(entry.d_model)
            cfg = ModelConfig(vocab_size=vocab_size, d_model=entry.d_model, n_layers=entry.n_layers,
                              n_heads=entry.n_heads, d_ff=d_ff, max_len=max_len, causal=causal)
        else:
            cfg = shape_for(entry, spec.model.param_count, vocab_size=vocab_size, max_len=max_len, causal=causal)
        cfg.validate()
    except ShapeError as err:
        raise SpecError(f"{source}: {key}: {err}") from None
    if spec.model.seq_len > cfg.max_len:
        raise SpecError(f"{source}: model.seq_len: {spec.model.seq_len} is longer than model.max_len {cfg.max_len}; "
                        "raise max_len or shorten seq_len")
    return cfg


def check_layout(spec: SweepSpec, source: str = "<spec>") -> dict[str, int]:
    """The mesh each run gets, checked against its devices, batch and microbatches (SpecError if not)."""
    n = spec.resources.devices_per_run()
    try:
        axes = mesh_axes(spec.mesh_config(), n)
    except ValueError as err:
        raise SpecError(f"{source}: resources.{err} (a run gets {n} device(s): resources.gpus, "
                        "resources.tpus, or on CPU resources.host_devices / cpus)") from None
    B, K = spec.optimizer.batch_size, spec.optimizer.microbatches
    shards = axes["data"] * axes["fsdp"]
    if B % K:
        raise SpecError(f"{source}: optimizer.microbatches: {K} does not divide optimizer.batch_size {B}")
    if (spec.mesh_config() is not None or K > 1) and (B // K) % shards:
        raise SpecError(f"{source}: optimizer.microbatches: each of the {K} microbatches has {B // K} rows, "
                        f"which do not split over resources.mesh data x fsdp = {shards} devices; "
                        "use fewer microbatches, a larger batch, or a smaller data/fsdp axis")
    return axes


def expand(spec: SweepSpec, *, token_dir: str, vocab_size: int, dataset_id: str,
           source: str = "<spec>") -> list[RunConfig]:
    """Every run of the sweep as a resolved config, in grid order. Raises SpecError before any compute."""
    if isinstance(spec.grid, AdaptiveGrid):  # its candidate pool (scaling/sweep/adaptive.py checks the rest)
        spec.grid.check_with(spec, source)
        return expand(spec.model_copy(update={"grid": spec.grid.pool_grid()}), token_dir=token_dir,
                      vocab_size=vocab_size, dataset_id=dataset_id, source=source)
    B, L = spec.optimizer.batch_size, spec.model.seq_len
    check_layout(spec, source)
    options, mesh = spec.model_options(), spec.mesh_config()
    # (shape, tokens, budget, where): `where` is (params index, budget index), to blame a duplicate run
    points: list[tuple[ModelConfig, float, float | None, tuple[int, int]]] = []
    if isinstance(spec.grid, LadderGrid):
        for i, p in enumerate(spec.grid.params):
            cfg = _shape(spec, p, vocab_size, source, f"grid.params[{i}]")
            points += [(cfg, t, None, (i, j)) for j, t in enumerate(spec.grid.tokens)]
    else:
        for j, c in enumerate(spec.grid.compute):
            for i, p in enumerate(spec.grid.params):
                cfg = _shape(spec, p, vocab_size, source, f"grid.params[{i}]")
                tokens = tokens_for_compute(c, counted_params(cfg, spec.model.param_count))
                points.append((cfg, tokens, c, (i, j)))
        if spec.grid.tokens_per_param is not None:
            points = _in_window(spec, points, source)
    runs, origins = [], []
    for cfg, tokens, budget, (i, j) in points:
        steps = steps_for_tokens(int(tokens), B, L)
        if steps < MIN_STEPS:
            what = f"compute {budget:.3g}" if budget else f"tokens {tokens:.3g}"
            raise SpecError(
                f"{source}: grid: {what} with {counted_params(cfg, spec.model.param_count):,} params gives only {steps} "
                f"optimizer steps of {B}x{L} tokens (at least {MIN_STEPS} needed); raise the budget, "
                "use smaller models, or lower optimizer.batch_size / model.seq_len")
        for k, seed in enumerate(spec.seeds):
            for m, mult in enumerate(spec.optimizer.lr_multipliers):
                for fraction in spec.dataset.fractions():
                    opt = spec.optimizer
                    origins.append((i, j, k, m))
                    runs.append(RunConfig(
                        sweep=spec.name, objective=spec.objective, budget=budget, model=cfg,
                        param_count=spec.model.param_count,
                        data=DataConfig(token_dir=token_dir, dataset_id=dataset_id, seq_len=L, batch_size=B,
                                        mask_prob=spec.mask_prob,
                                        # None (left out) at 1.0, so runs on all the data keep their ids
                                        train_fraction=fraction if fraction < 1.0 else None),
                        train=TrainConfig(tokens=steps * B * L, steps=steps, seed=seed,
                                          lr=opt.lr_for(cfg.d_model, mult), lr_multiplier=mult,
                                          warmup_steps=max(1, round(opt.warmup_fraction * steps)),
                                          min_lr_ratio=opt.min_lr_ratio, weight_decay=opt.weight_decay,
                                          b1=opt.b1, b2=opt.b2, clip=opt.clip),
                        eval=EvalConfig(n_evals=spec.eval.n_evals, batches=spec.eval.batches, split=spec.eval.split),
                        checkpoint=CheckpointConfig.from_dict(spec.checkpoint.model_dump(exclude_none=True)),
                        # only when set: runs that use neither keep the ids they always had
                        options=options or None, mesh=mesh))
    if spec.optimizer.schedule == "wsd":
        runs = trunks_and_branches(runs, spec.optimizer)
    seen: dict[str, int] = {}
    for n, r in enumerate(runs):
        first = seen.setdefault(config_hash(r), n)
        if first != n:
            raise SpecError(_duplicate_message(spec, runs[n], origins[first], origins[n], source))
    return runs


def _in_window(spec: SweepSpec, points: list, source: str) -> list:
    """The IsoFLOP points whose tokens per parameter lie in grid.tokens_per_param; every budget must keep at
    least 3 sizes (an IsoFLOP profile) and every size at least one budget."""
    lo, hi = spec.grid.tokens_per_param
    key = f"{source}: grid.tokens_per_param: [{lo:g}, {hi:g}]"
    kept = [pt for pt in points if lo <= pt[1] / counted_params(pt[0], spec.model.param_count) <= hi]
    for j, c in enumerate(spec.grid.compute):
        n = sum(1 for pt in kept if pt[3][1] == j)
        if n < 3:
            raise SpecError(f"{key} keeps {n} size(s) at grid.compute[{j}] = {c:.3g} (an IsoFLOP profile needs at "
                            "least 3); widen the window, add sizes near that budget's optimum, or drop the budget")
    for i in range(len(spec.grid.params)):
        if not any(pt[3][0] == i for pt in kept):
            raise SpecError(f"{key} keeps no budget for grid.params[{i}]; remove that size or widen the window")
    return kept


def _duplicate_message(spec: SweepSpec, run: dict, a: tuple, b: tuple, source: str) -> str:
    """Two grid points give one run: blame the list whose entries collide (the first index that differs)."""
    budget_key = "grid.tokens" if isinstance(spec.grid, LadderGrid) else "grid.compute"
    budgets = spec.grid.tokens if isinstance(spec.grid, LadderGrid) else spec.grid.compute
    m, t = run["model"], run["train"]
    if a[2] != b[2]:
        return (f"{source}: seeds: seed {spec.seeds[b[2]]} is listed twice (items [{a[2]}] and [{b[2]}]); "
                "each seed gives one run, so list each once")
    if a[3] != b[3]:
        return (f"{source}: optimizer.lr_multipliers: items [{a[3]}] and [{b[3]}] are the same "
                f"({spec.optimizer.lr_multipliers[b[3]]}); list each multiplier once")
    if a[0] == b[0]:
        return (f"{source}: {budget_key}: items [{a[1]}] and [{b[1]}] ({budgets[a[1]]:.4g} and {budgets[b[1]]:.4g}) "
                f"give the same run ({t['steps']} steps of {run['data']['batch_size']}x{run['data']['seq_len']} "
                f"tokens for the model of grid.params[{a[0]}]); remove one or space them further apart")
    return (f"{source}: grid.params: two entries give the same model (items [{a[0]}] and [{b[0]}]: d_model "
            f"{m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads) at the same tokens: shapes come in steps at small "
            "sizes; space the sizes further apart (e.g. by 2x or more) or give explicit shapes")


def dataset_id(spec: SweepSpec) -> str:
    """The hash of the fields that define a prepared dataset (its folder is `<kind>-<dataset_id>`): the
    dataset section of the spec and, for a MEDS path, a fingerprint of what is there now (file sizes,
    modification times, parquet footers), so data replaced at the same path is a new dataset."""
    fields: dict[str, Any] = {"dataset": spec.dataset.identity(), "format": 1}
    if spec.dataset.meds is not None:
        from medscale.data.meds import meds_fingerprint

        fields["input"] = meds_fingerprint(spec.dataset.meds)
    return identity_hash(fields)


def dataset_kind(spec: SweepSpec) -> str:
    return "simulator" if spec.dataset.simulator is not None else "meds"
