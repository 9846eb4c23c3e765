"""Paired comparisons between models scored on the same test subjects.

Every model of a task is scored on the same test rows, and the subject bootstrap of analysis/metrics.py
draws the same resampled subjects for each of them (same rows, same bootstrap seed). Draw b of model i and
draw b of model j therefore come from one resampled test set, and the difference of the two draws is the
bootstrap of the difference: "size 2 beats size 1" gets its own interval, which is far narrower than the one
obtained by treating the two models' errors as independent (the test set's difficulty is shared).

Draws come as a long table: run_id, seed, draw, value and `resample` (the id of the resamples, from
metrics.resample_id); only draws with one resample id are paired. Seeds: when a run was evaluated with several
training seeds, draw b of the run is the mean over a with-replacement resample of its seeds of their draw b,
so the interval holds both the test-set noise and the seed-to-seed variance.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_LEVEL, interval


def draw_matrix(draws: pd.DataFrame | None, run_ids, *, seed: int = 0) -> np.ndarray | None:
    """(B, len(run_ids)) paired draws of each run's metric (rows: one resampled test set), or None when a run
    has no draws or the runs were not scored on one set of resamples."""
    if draws is None or len(draws) == 0:
        return None
    sub = draws[draws["run_id"].isin(list(run_ids))]
    if sub.empty or sub["resample"].nunique() != 1:
        return None
    rng = np.random.default_rng(seed)
    cols = []
    for rid in run_ids:
        d = sub[sub["run_id"] == rid]
        if d.empty:
            return None
        wide = d.pivot_table(index="seed", columns="draw", values="value", aggfunc="mean", dropna=False)
        D_SxB = wide.to_numpy(dtype=float)
        if D_SxB.shape[0] == 1:
            cols.append(D_SxB[0])
            continue
        S, B = D_SxB.shape
        pick_BxS = rng.integers(0, S, size=(B, S))
        cols.append(np.nanmean(D_SxB[pick_BxS, np.arange(B)[:, None]], axis=1))
    if len({c.size for c in cols}) != 1:
        return None
    return np.column_stack(cols)


def paired_differences(labels, values, matrix: np.ndarray | None, *, low=None, high=None,
                       level: float = DEFAULT_LEVEL, higher_is_better: bool = True) -> pd.DataFrame:
    """Consecutive differences values[i+1] - values[i] with a paired bootstrap interval (from `matrix`, the
    (B, n) paired draws) and, for comparison, the interval that treats the two as independent (from each
    point's own interval low/high, or the draws' spread). p_better: the share of paired draws in which the
    later one is better."""
    values = np.asarray(values, dtype=float)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if low is not None and high is not None:
        se = (np.asarray(high, float) - np.asarray(low, float)) / (2 * z)
    elif matrix is not None:
        se = np.nanstd(matrix, axis=0)
    else:
        se = np.full(values.size, np.nan)
    rows = []
    sign = 1.0 if higher_is_better else -1.0
    for i in range(values.size - 1):
        diff = values[i + 1] - values[i]
        half = z * float(np.hypot(se[i], se[i + 1]))
        row = {"from": labels[i], "to": labels[i + 1], "difference": diff, "low": np.nan, "high": np.nan,
               "p_better": np.nan, "unpaired_low": diff - half, "unpaired_high": diff + half}
        if matrix is not None:
            d = matrix[:, i + 1] - matrix[:, i]
            d = d[np.isfinite(d)]
            if d.size:
                lo, hi = interval(d[:, None], level)
                row.update(low=float(lo[0]), high=float(hi[0]), p_better=float(np.mean(sign * d > 0)))
        rows.append(row)
    return pd.DataFrame(rows, columns=["from", "to", "difference", "low", "high", "p_better", "unpaired_low",
                                       "unpaired_high"])
