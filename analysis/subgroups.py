"""Subgroup scaling: does a bigger model close or open the gap between groups of patients?

Input: one row per (run, task, mode, group kind, group) with the metric measured on that group's test rows
(scaling/downstream scores sex and age band at the prediction time). For each task, mode and kind, one run per
size (saturation.one_run_per_size); the groups' order is fixed by their mean over sizes (best and worst group),
and the gap best - worst at each size is regressed on log2 N, weighted by its variance (each group's interval
gives a standard error; the two groups are disjoint subjects, so their errors add). The slope is the change of
the gap per doubling of N: "narrows" when its interval lies below zero, "widens" when above, else "no clear
change" (with how many sizes it rests on).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_LEVEL
from .saturation import PRETRAINED, higher_is_better, one_run_per_size

COLUMNS = ["task", "mode", "kind", "best", "worst", "n_sizes", "gap_smallest", "gap_largest", "slope_per_doubling",
           "low", "high", "verdict"]


def _weighted_slope(x, y, se):
    w = 1.0 / np.maximum(se, 1e-6) ** 2
    xm = np.sum(w * x) / np.sum(w)
    sxx = np.sum(w * (x - xm) ** 2)
    slope = np.sum(w * (x - xm) * (y - np.sum(w * y) / np.sum(w))) / sxx
    resid = y - (np.sum(w * y) / np.sum(w) + slope * (x - xm))
    # the larger of the reported noise and the scatter about the line (a line that does not fit is not trusted)
    scale = max(1.0, float(np.sum(w * resid**2) / max(1, x.size - 2)))
    return slope, np.sqrt(scale / sxx)


def subgroup_scaling(subgroups: pd.DataFrame, *, metric: str = "auroc", modes: tuple = PRETRAINED,
                     level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    d = subgroups[(subgroups["metric"] == metric) & subgroups["mode"].isin(modes)].copy()
    d["params"] = pd.to_numeric(d["params"], errors="coerce")
    d = d[np.isfinite(d["params"]) & np.isfinite(d["value"])]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    sign = 1.0 if higher_is_better(metric) else -1.0
    rows = []
    for (task, mode, kind), g in d.groupby(["task", "mode", "kind"]):
        runs = one_run_per_size(g.drop_duplicates("run_id"), "params")["run_id"]
        g = g[g["run_id"].isin(runs)]
        wide = g.pivot_table(index="params", columns="group", values="value")
        se = ((g["high"] - g["low"]) / (2 * z)).groupby([g["params"], g["group"]]).mean().unstack()
        wide = wide.dropna(axis=1, thresh=2).dropna(axis=0)
        if wide.shape[1] < 2 or wide.shape[0] < 3:
            continue
        order = (sign * wide).mean().sort_values(ascending=False).index
        best, worst = order[0], order[-1]
        gap = sign * (wide[best] - wide[worst])
        gse = np.hypot(se.reindex_like(wide)[best], se.reindex_like(wide)[worst]).fillna(gap.std() or 0.01)
        x = np.log2(wide.index.to_numpy(dtype=float))
        slope, s_se = _weighted_slope(x, gap.to_numpy(), gse.to_numpy())
        lo, hi = slope - z * s_se, slope + z * s_se
        verdict = "narrows" if hi < 0 else ("widens" if lo > 0 else "no clear change")
        rows.append({"task": task, "mode": mode, "kind": kind, "best": best, "worst": worst, "n_sizes": len(wide),
                     "gap_smallest": float(gap.iloc[0]), "gap_largest": float(gap.iloc[-1]),
                     "slope_per_doubling": float(slope), "low": float(lo), "high": float(hi), "verdict": verdict})
    return pd.DataFrame(rows, columns=COLUMNS)
