"""Figures of the downstream sections: subgroup curves against model size."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .plots import FORMATS, _figure, _save


def plot_subgroups(subgroups: pd.DataFrame, task: str, out, *, metric: str = "auroc", mode: str = "probe",
                   formats=FORMATS) -> list[Path] | None:
    """One panel per group kind (sex, age band): the metric of each group against N, with intervals."""
    d = subgroups[(subgroups["task"] == task) & (subgroups["metric"] == metric) & (subgroups["mode"] == mode)]
    d = d[np.isfinite(pd.to_numeric(d["params"], errors="coerce"))]
    kinds = sorted(d["kind"].unique())
    if d.empty or not kinds:
        return None
    fig, axes = _figure(len(kinds))
    palette = matplotlib.colormaps["tab10"]
    for ax, kind in zip(axes, kinds):
        g = d[d["kind"] == kind]
        for i, (group, gg) in enumerate(g.groupby("group")):
            gg = gg.groupby("params", as_index=False)[["value", "low", "high"]].mean().sort_values("params")
            ax.errorbar(gg["params"], gg["value"], yerr=[gg["value"] - gg["low"], gg["high"] - gg["value"]],
                        fmt="o-", ms=4, lw=1.0, color=palette(i), label=str(group))
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel(metric)
        ax.set_title(f"{task} ({mode}): by {kind}")
        ax.legend(fontsize=7)
    return _save(fig, out, formats)
