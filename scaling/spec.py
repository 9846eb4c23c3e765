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
    seeds: [0]
    optimizer: {batch_size: 16, lr: 3e-3, lr_scaling: inverse_width, base_width: 128,
                lr_multipliers: [1.0]}
    resources: {cpus: 1}
    eval: {n_evals: 8, batches: 4}
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medscale.analysis.conventions import tokens_for_compute
from medscale.models.config import ModelConfig, ShapeError, counted_params, d_ff_for, shape_for
from medscale.scaling.downstream.spec import DownstreamSpec
from medscale.scaling.steps import identity_hash
from medscale.scaling.store import config_hash
from medscale.scaling.train import steps_for_tokens

MIN_STEPS = 10
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulatorSpec(_Strict):
    subjects: int = Field(gt=0)
    seed: int = 0


class TokenizerSpec(_Strict):
    min_count: int = Field(5, ge=1)
    value_bins: int = Field(10, ge=1, le=100)


class DatasetSpec(_Strict):
    simulator: SimulatorSpec | None = None
    meds: str | None = None
    tokenizer: TokenizerSpec = TokenizerSpec()

    @model_validator(mode="after")
    def one_source(self) -> "DatasetSpec":
        if (self.simulator is None) == (self.meds is None):
            raise ValueError("give exactly one of dataset.simulator (synthetic cohort) or dataset.meds (a MEDS root)")
        return self

    def identity(self) -> dict:
        return self.model_dump()


class ExplicitShape(_Strict):
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None


class ModelSpec(_Strict):
    seq_len: int = Field(128, gt=1)
    max_len: int | None = None
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

    _parse_compute = field_validator("compute", mode="before")(_quantities)
    _parse_params = field_validator("params", mode="before")(_sizes)


class OptimizerSpec(_Strict):
    batch_size: int = Field(16, gt=0)
    lr: float = Field(3e-3, gt=0, lt=1)
    lr_scaling: Literal["constant", "inverse_width"] = "inverse_width"
    base_width: int = Field(128, gt=0)
    lr_multipliers: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.95, ge=0, lt=1)
    clip: float = Field(1.0, gt=0)
    microbatches: int = Field(1, ge=1, description="gradient accumulation: each step's batch in this many slices")

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
    cpus: int = Field(1, ge=1)
    gpus: float = Field(0, ge=0)
    tpus: int = Field(0, ge=0)
    host_devices: int | None = Field(None, ge=1, description="CPU only: XLA host devices per run (default: cpus)")
    mesh: MeshSpec | None = None
    device_memory_gb: float | None = Field(None, gt=0, description="memory of one device (default: accelerator's)")
    accelerator: str | None = Field(None, description="e.g. h100, a100-40gb, tpu-v5e: the device memory budget")

    def devices_per_run(self) -> int:
        """The devices one run's process sees: its GPUs, TPU chips, or XLA host devices on CPU."""
        if self.gpus:
            return max(1, int(self.gpus))
        if self.tpus:
            return self.tpus
        return self.host_devices or self.cpus


class EvalSpec(_Strict):
    n_evals: int = Field(8, ge=1)
    batches: int = Field(4, ge=1)
    split: Literal["tuning", "held_out"] = "tuning"


class CheckpointSpec(_Strict):
    every_steps: int = Field(100, ge=1)


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    objective: Literal["decoder", "encoder"]
    dataset: DatasetSpec
    model: ModelSpec = ModelSpec()
    grid: Union[LadderGrid, IsoFlopGrid] = Field(discriminator="mode")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    optimizer: OptimizerSpec = OptimizerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    retries: int = Field(2, ge=0, le=20)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    downstream: DownstreamSpec | None = None  # tasks evaluated on every finished run of this sweep

    def model_options(self) -> dict:
        """The run config's `options`: the non-default ways of computing (models/options.py)."""
        from medscale.models.options import ModelOptions

        m = self.model
        return ModelOptions(attention=m.attention, remat=m.remat, scan_layers=m.scan_layers, dtype=m.dtype,
                            microbatches=self.optimizer.microbatches).validate().to_dict()

    def mesh_config(self) -> dict | None:
        """The run config's `mesh`, or None (the default: data parallel over every device)."""
        return None if self.resources.mesh is None else self.resources.mesh.requested()


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: the sweep spec is invalid ({err.error_count()} problem(s)); nothing was launched."]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("ladder", "isoflop")))
        got = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the allowed keys in experiments/README.md)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        shown = "" if e["type"] == "missing" else f" (got {got!r})" if not isinstance(got, dict) else ""
        lines.append(f"  - {loc or '<top>'}: {msg}{shown}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such sweep spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_spec(raw, source=str(path), base_dir=path.parent)


def parse_spec(raw: Any, *, source: str = "<spec>", base_dir: Path | None = None) -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep spec is a YAML mapping (name:, objective:, dataset:, grid:, ...), "
                        f"got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_error(source, err)) from None
    if spec.dataset.meds is not None:
        meds = Path(spec.dataset.meds).expanduser()
        if not meds.is_absolute() and base_dir is not None and not meds.exists():
            meds = (base_dir / meds)
        if not meds.exists():
            raise SpecError(f"{source}: dataset.meds: {spec.dataset.meds!r} does not exist; "
                            "give the root folder of a MEDS dataset (holding data/ and metadata/)")
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
    from medscale.models.options import mesh_axes

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
           source: str = "<spec>") -> list[dict]:
    """Every run of the sweep as a resolved config, in grid order. Raises SpecError before any compute."""
    B, L = spec.optimizer.batch_size, spec.model.seq_len
    check_layout(spec, source)
    options, mesh = spec.model_options(), spec.mesh_config()
    points: list[tuple[ModelConfig, float, float | None]] = []  # (shape, tokens, budget)
    if isinstance(spec.grid, LadderGrid):
        for i, p in enumerate(spec.grid.params):
            cfg = _shape(spec, p, vocab_size, source, f"grid.params[{i}]")
            points += [(cfg, t, None) for t in spec.grid.tokens]
    else:
        for c in spec.grid.compute:
            for i, p in enumerate(spec.grid.params):
                cfg = _shape(spec, p, vocab_size, source, f"grid.params[{i}]")
                tokens = tokens_for_compute(c, counted_params(cfg, spec.model.param_count))
                points.append((cfg, tokens, c))
    runs = []
    for cfg, tokens, budget in points:
        steps = steps_for_tokens(int(tokens), B, L)
        if steps < MIN_STEPS:
            what = f"compute {budget:.3g}" if budget else f"tokens {tokens:.3g}"
            raise SpecError(
                f"{source}: grid: {what} with {counted_params(cfg, spec.model.param_count):,} params gives only {steps} "
                f"optimizer steps of {B}x{L} tokens (at least {MIN_STEPS} needed); raise the budget, "
                "use smaller models, or lower optimizer.batch_size / model.seq_len")
        for seed in spec.seeds:
            for mult in spec.optimizer.lr_multipliers:
                opt = spec.optimizer
                runs.append({
                    "sweep": spec.name,
                    "objective": spec.objective,
                    "budget": budget,
                    "model": cfg.to_dict(),
                    "param_count": spec.model.param_count,
                    "data": {"token_dir": token_dir, "dataset_id": dataset_id, "seq_len": L,
                             "batch_size": B, "mask_prob": spec.mask_prob},
                    "train": {"tokens": steps * B * L, "steps": steps, "seed": seed,
                              "lr": opt.lr_for(cfg.d_model, mult), "lr_multiplier": mult,
                              "warmup_steps": max(1, round(opt.warmup_fraction * steps)),
                              "min_lr_ratio": opt.min_lr_ratio, "weight_decay": opt.weight_decay,
                              "b1": opt.b1, "b2": opt.b2, "clip": opt.clip},
                    "eval": {"n_evals": spec.eval.n_evals, "batches": spec.eval.batches, "split": spec.eval.split},
                    "checkpoint": {"every_steps": spec.checkpoint.every_steps},
                    # only when set: runs that use neither keep the ids they always had
                    **({"options": options} if options else {}),
                    **({"mesh": mesh} if mesh is not None else {}),
                })
    seen: dict[str, dict] = {}
    for r in runs:
        other = seen.setdefault(config_hash(r), r)
        if other is not r:
            m = r["model"]
            raise SpecError(
                f"{source}: grid.params: two entries give the same model (d_model {m['d_model']}, {m['n_layers']} "
                f"layers, {m['n_heads']} heads) at the same tokens: shapes come in steps at small sizes; "
                "space the sizes further apart (e.g. by 2x or more) or give explicit shapes")
    return runs


def dataset_id(spec: SweepSpec) -> str:
    """The hash of the fields that define a prepared dataset (its folder is `<kind>-<dataset_id>`)."""
    return identity_hash({"dataset": spec.dataset.identity(), "format": 1})


def dataset_kind(spec: SweepSpec) -> str:
    return "simulator" if spec.dataset.simulator is not None else "meds"
