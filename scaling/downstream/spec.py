"""The downstream spec, the one schema for `downstream:` in a sweep spec and for `medscale downstream --spec`:
which tasks, modes, seeds and label budgets, and how samples are split."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from medscale.data.meds import MedsError
from medscale.scaling.errors import UserError

MODES = ("probe", "finetune", "scratch", "zero_shot", "lightgbm", "ceiling")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneSpec(_Strict):
    steps: int = Field(200, ge=1, le=100_000)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_runs: int | None = Field(None, ge=1, description="fine-tune/scratch only this many runs, spread over sizes")


class ZeroShotSpec(_Strict):
    k: int = Field(16, ge=1, description="trajectories per prediction time (the largest K of the sweep)")
    k_sweep: list[int] = Field(default_factory=lambda: [1, 4, 16], description="AUROC also from the first k of "
                               "the K trajectories, for each k here up to K")
    max_new_tokens: int = Field(512, ge=1, description="hard cap on tokens per trajectory; the budget of each task "
                                "is what its window holds in the train split (90th percentile) x window_factor")
    window_factor: float = Field(1.5, gt=0, description="margin on the tokens the window holds")
    max_samples: int = Field(200, ge=1, description="test samples rolled out per task")
    batch_prompts: int = Field(16, ge=1, description="prompts per rollout batch (x K trajectories)")
    max_runs: int | None = Field(None, ge=1, description="roll out only this many decoders, spread over sizes")
    temperature: float = Field(1.0, gt=0)
    tasks: list[str] | None = Field(None, description="roll out only these tasks (default: every binary task)")


class DownstreamSpec(_Strict):
    # a label folder (data/labels.py): tasks are its sub-folders, labels come from it instead of task files
    labels: str | None = Field(None, description="folder of MEDS label files, one sub-folder per task")
    # the dataset's predicates file for ACES task files (data/tasks.py; default: the simulator's)
    predicates: str | None = Field(None, description="predicates file defining the names task files use")
    tasks: list[str] = Field(min_length=1)
    modes: list[Literal["probe", "finetune", "scratch", "zero_shot", "lightgbm", "ceiling"]] = Field(
        default_factory=lambda: ["probe", "lightgbm", "ceiling"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    label_budgets: list[Union[int, Literal["all"]]] = Field(default_factory=lambda: ["all"], min_length=1)
    max_samples: int = Field(2000, ge=10, description="rows per task in the fit pool and in the test set")
    fit_splits: list[Literal["train", "tuning", "held_out"]] = Field(default_factory=lambda: ["train"])
    test_splits: list[Literal["train", "tuning", "held_out"]] = Field(default_factory=lambda: ["held_out"])
    temporal_cutoff: str | None = Field(None, description="ISO date: fit before it, test at or after it")
    n_boot: int = Field(200, ge=0)
    finetune: FinetuneSpec = FinetuneSpec()
    zero_shot: ZeroShotSpec = ZeroShotSpec()
    meds: str | None = Field(None, description="MEDS root (default: the one the runs' tokens were made from)")

    @model_validator(mode="before")
    @classmethod
    def _tasks_of_label_folder(cls, raw):
        if isinstance(raw, dict) and raw.get("labels") and not raw.get("tasks"):
            from medscale.data.labels import label_task_files

            raw = {**raw, "tasks": list(label_task_files(raw["labels"]))}
        return raw

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str], info) -> list[str]:
        from medscale.data.tasks import load_task

        if info.data.get("labels"):
            from medscale.data.labels import LabelError, label_task_files

            present = label_task_files(info.data["labels"])
            missing = [name for name in v if name not in present]
            if missing:
                raise LabelError(f"{info.data['labels']}: no labels for task(s) {', '.join(missing)} "
                                 f"(tasks there: {', '.join(present)})")
            return v
        for name in v:
            load_task(name, info.data.get("predicates"))  # raises TaskError naming the file and the problem
        return v

    @model_validator(mode="after")
    def _label_folder_modes(self):
        if self.labels and "zero_shot" in self.modes:
            raise ValueError("modes: zero_shot reads the label off generated events, which needs an ACES task "
                             "file; tasks from a label folder (labels:) take probe, finetune, scratch and lightgbm")
        return self

    @field_validator("label_budgets")
    @classmethod
    def _positive(cls, v):
        if any(b != "all" and b < 1 for b in v):
            raise ValueError(f"label budgets are examples per class (>= 1) or 'all', got {v}")
        return v

    @field_validator("temporal_cutoff")
    @classmethod
    def _date(cls, v):
        if v is not None:
            datetime.fromisoformat(v)
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        dumped = handler(self)
        for key in ("labels", "predicates"):   # unset: specs from before them keep their evaluation identities
            if dumped.get(key) is None:
                dumped.pop(key, None)
        return dumped

    @property
    def protocol(self) -> str:
        return f"temporal:{self.temporal_cutoff}" if self.temporal_cutoff else "subjects"


def load_downstream_spec(raw: dict | str | Path, source: str | None = None) -> DownstreamSpec:
    """From a dict (a sweep spec's `downstream:` value) or a YAML file holding one (top level or under
    `downstream:`). A problem raises the error that names it: a label folder's or task file's own error
    (LabelError, TaskError), else a UserError listing each field's problem, headed by `source`."""
    if not isinstance(raw, dict):
        source = source or str(raw)
        raw = yaml.safe_load(Path(raw).read_text())
        raw = raw.get("downstream", raw) if isinstance(raw, dict) else raw
    try:
        return DownstreamSpec.model_validate(raw)
    except ValidationError as err:
        raise _named_error(source or "the downstream spec", err) from None


def _named_error(source: str, err: ValidationError) -> ValueError:
    """The user's error a validator raised (it names the folder or file), or one message per field in the
    sweep spec's format (scaling/sweep/spec.py _format_error), without pydantic's raw text."""
    from medscale.data.tasks import TaskError  # polars: loaded only when a spec is wrong
    from medscale.scaling.sweep.spec import _format_error  # sweep.spec imports this module

    for problem in err.errors():
        raised = (problem.get("ctx") or {}).get("error")
        if isinstance(raised, (MedsError, TaskError)):
            return raised
    fields = _format_error(source, err).split("\n", 1)[1]
    return UserError(f"{source}: the downstream spec is invalid ({err.error_count()} problem(s)); nothing was "
                     f"evaluated.\n{fields}")
