"""One run's resolved configuration, typed: what `spec.expand` builds, the store writes to `config.yaml`, and
training, scheduling, planning, WSD and the recommendation read.

Each field says whether it is part of the run's identity (`identity(...)`: it changes what the run computes,
so it is hashed into the run id) or only a setting (`setting(...)`: where the tokens are, how often to
checkpoint by the clock, the mesh). The run id hashes exactly the identity fields present in the config's
dict form, so the run ids of stores written before this class existed are unchanged. Optional fields whose
value is None are left out of the dict form (`omit_none`): configs that never used them keep their ids.

Reading a config written by any earlier medscale goes through medscale.scaling.sweep.store_format, which
fills the keys older configs lack; a key no medscale ever wrote is an error that names it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from medscale.models.config import ModelConfig
from medscale.scaling.sweep.store_format import upgrade_run_config


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps of batch_size x seq_len tokens that cover `tokens` (at least one)."""
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


def identity(*, default: Any = dataclasses.MISSING, omit_none: bool = False):
    """A field that defines what the run computes (hashed into the run id)."""
    return field(default=default, metadata={"identity": True, "omit_none": omit_none})


def setting(*, default: Any = None, omit_none: bool = True):
    """A field that does not change what the run computes (not hashed)."""
    return field(default=default, metadata={"identity": False, "omit_none": omit_none})


class ConfigKeyError(ValueError):
    """A run config with a key no medscale writes, or without one it needs."""


class _Section:
    """Dict form and identity of a frozen dataclass whose fields are marked identity or setting."""

    SECTIONS: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    @classmethod
    def identity_of(cls, body: dict[str, Any]) -> dict[str, Any]:
        """The identity fields present in a dict form (sections recursively)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name not in body or not f.metadata.get("identity"):
                continue
            sub = cls.SECTIONS.get(f.name)
            out[f.name] = sub.identity_of(body[f.name]) if sub and isinstance(body[f.name], dict) else body[f.name]
        return out

    @classmethod
    def from_dict(cls, body: dict[str, Any], where: str = ""):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - names)
        if unknown:
            raise ConfigKeyError(f"{where or 'run config'}: unknown key(s) {unknown}; a run config has {sorted(names)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in body and f.default is dataclasses.MISSING)
        if missing:
            raise ConfigKeyError(f"{where or 'run config'}: missing key(s) {missing}")
        values = {}
        for name, value in body.items():
            sub = cls.SECTIONS.get(name)
            values[name] = sub.from_dict(value, f"{where}{'.' if where else ''}{name}") if sub else value
        return cls(**values)


@dataclass(frozen=True)
class DataConfig(_Section):
    dataset_id: str = identity()
    seq_len: int = identity()
    batch_size: int = identity()
    mask_prob: float = identity(default=0.15)
    train_fraction: float | None = identity(default=None, omit_none=True)  # only when < 1
    token_dir: str = setting(default="", omit_none=False)  # where the tokens are; the dataset is dataset_id

    @property
    def fraction(self) -> float:
        return 1.0 if self.train_fraction is None else self.train_fraction


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The optimizer and schedule of one run (WSD fields only under `optimizer.schedule: wsd`)."""

    lr: float = identity()
    tokens: int = identity(default=0)
    steps: int = identity(default=0)
    seed: int = identity(default=0)
    lr_multiplier: float | None = identity(default=None, omit_none=True)
    warmup_steps: int | None = identity(default=None, omit_none=True)  # None: 5% of the steps
    min_lr_ratio: float = identity(default=0.1)
    weight_decay: float = identity(default=0.1)
    b1: float = identity(default=0.9)
    b2: float = identity(default=0.95)
    clip: float = identity(default=1.0)
    schedule: str | None = identity(default=None, omit_none=True)  # None: cosine
    cooldown_fraction: float | None = identity(default=None, omit_none=True)
    cooldown_shape: str | None = identity(default=None, omit_none=True)
    parent: str | None = identity(default=None, omit_none=True)  # a WSD branch: its trunk's run id
    fork_step: int | None = identity(default=None, omit_none=True)  # ... and the step it forks at

    @property
    def is_wsd(self) -> bool:
        return self.schedule == "wsd"

    @property
    def fork(self) -> tuple[str, int] | None:
        return (self.parent, int(self.fork_step)) if self.parent else None


@dataclass(frozen=True)
class EvalConfig(_Section):
    n_evals: int = identity(default=8)
    batches: int = identity(default=4)
    split: str = identity(default="tuning")
    every_steps: int | None = identity(default=None, omit_none=True)  # overrides n_evals when set


@dataclass(frozen=True)
class CheckpointConfig(_Section):
    every_steps: int = identity(default=200)
    every_minutes: float | None = setting()
    grace_seconds: float | None = setting()
    fork_steps: tuple[int, ...] | None = setting()  # a WSD trunk's fork checkpoints (grows as budgets are added)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.fork_steps is not None:
            out["fork_steps"] = list(self.fork_steps)
        return out

    @classmethod
    def from_dict(cls, body, where=""):
        body = dict(body)
        if body.get("fork_steps") is not None:
            body["fork_steps"] = tuple(int(s) for s in body["fork_steps"])
        return super().from_dict(body, where)


class _Model:
    """ModelConfig as a section (its own dict form, hashed whole)."""

    @staticmethod
    def from_dict(body, where=""):
        return ModelConfig.from_dict(body)

    @staticmethod
    def identity_of(body):
        return body


@dataclass(frozen=True)
class RunConfig(_Section, Mapping):
    """One run: a point of a sweep's grid, resolved. Read it by attribute (`run.train.steps`); as a Mapping it
    is its dict form (what config.yaml holds; each value a copy), for code that reads configs as YAML."""

    SECTIONS: ClassVar[dict[str, type]] = {"model": _Model, "data": DataConfig, "train": TrainConfig,
                                           "eval": EvalConfig, "checkpoint": CheckpointConfig}

    model: ModelConfig = identity()
    data: DataConfig = identity()
    train: TrainConfig = identity()
    objective: str = identity(default="decoder")
    sweep: str | None = identity(default=None)
    budget: float | None = identity(default=None)  # the IsoFLOP budget it belongs to; None on a ladder
    param_count: str = identity(default="non_embedding")  # what N counts (models/config.py counted_params)
    eval: EvalConfig = identity(default=EvalConfig())
    checkpoint: CheckpointConfig = identity(default=CheckpointConfig())
    options: dict | None = identity(default=None, omit_none=True)  # models/options.py, only when not the default
    mesh: dict | None = setting()  # resources.mesh; None: data parallel over every device

    @classmethod
    def coerce(cls, config: "RunConfig | dict") -> "RunConfig":
        if isinstance(config, RunConfig):
            return config
        return cls.from_dict(upgrade_run_config(config))

    def identity(self) -> dict[str, Any]:
        return self.identity_of(self.to_dict())

    @cached_property
    def _as_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._as_dict[key])  # a copy: the config itself changes only through replace()

    def __iter__(self):
        return iter(self._as_dict)

    def __len__(self) -> int:
        return len(self._as_dict)

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with whole sections or top-level fields replaced; `train={...}` etc. update a section."""
        values = {}
        for name, value in sections.items():
            current = getattr(self, name)
            values[name] = dataclasses.replace(current, **value) if isinstance(value, dict) and \
                dataclasses.is_dataclass(current) else value
        return dataclasses.replace(self, **values)

    @property
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.seq_len

    @property
    def trained_steps(self) -> int:
        """Steps this run itself trains: all of them, but a WSD branch only its cooldown."""
        return self.train.steps - (self.train.fork[1] if self.train.fork else 0)


def identity_of(config: dict) -> dict:
    """The identity fields present in a run config's dict form (what its run id hashes)."""
    return RunConfig.identity_of(config)
