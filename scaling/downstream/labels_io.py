"""Tasks from a label folder (`labels:` in the downstream spec, `medscale downstream --labels DIR`).

A label folder holds MEDS label files, one sub-folder (or file) per task, as ACES and MEDS-DEV write them
(data/labels.py validates them). `label_task(meds, label_dir, name)` gives what `prepare_task` needs for a
task file: a task object (name, kind) and the label frame of data/tasks.extract_labels, so the split, the
caps, every mode but zero-shot and the results table work unchanged. There is no ground truth, so no
ceiling row; zero-shot needs an ACES task file (the spec refuses it with a label folder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medscale.data.labels import read_label_task
from medscale.data.meds import read_meds


@dataclass(frozen=True)
class LabelTask:
    """A task defined by its labels alone (the parts of data.tasks.Task the evaluation reads)."""
    name: str
    path: Path
    kind: str                       # binary | regression
    description: str = ""
    ground_truth: None = None
    parts: tuple = field(default_factory=tuple)

    def label_rule(self):
        from medscale.data.tasks import TaskError

        raise TaskError(f"{self.path}: task {self.name} comes from a label folder; zero-shot needs an ACES task "
                        "file that says which events make the label")


def label_task(meds, label_dir, name: str) -> tuple[LabelTask, pd.DataFrame]:
    """(the task, its validated label frame) for task `name` of the label folder, over the MEDS dataset."""
    labels, kind = read_label_task(label_dir, name, read_meds(meds))
    return LabelTask(name, Path(label_dir) / name, kind, f"labels from {label_dir}"), labels
