"""Warnings about poorly determined fits, and leave-one-budget-out extrapolation error.

Thresholds are deliberately plain numbers a reader can argue with; they are not statistical tests.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .bootstrap import Estimate

FEW_POINTS = 20  # below this, a 5-parameter L(N, D) fit is fragile
WIDE_EXPONENT = 0.2  # interval width on the allocation exponents a or b
WIDE_FACTOR = 4.0  # high/low of a positive parameter (e.g. alpha, E)
COLLINEAR = 0.98  # |corr(log N, log D)| above which alpha and beta cannot be told apart
FAILED_BOOT = 0.05  # share of failed resamples worth mentioning


def wide_exponents(estimates: dict[str, Estimate], names=("a", "b")) -> list[str]:
    out = []
    for name in names:
        e = estimates.get(name)
        if e is not None and np.isfinite(e.low) and e.high - e.low > WIDE_EXPONENT:
            out.append(
                f"very wide interval on {name}: [{e.low:.3g}, {e.high:.3g}] (width > {WIDE_EXPONENT}); "
                "more sizes or budgets are needed before trusting the allocation"
            )
    return out


def wide_factors(estimates: dict[str, Estimate], names) -> list[str]:
    out = []
    for name in names:
        e = estimates.get(name)
        if e is not None and np.isfinite(e.low) and e.ratio > WIDE_FACTOR:
            out.append(f"very wide interval on {name}: [{e.low:.3g}, {e.high:.3g}] (a factor {e.ratio:.3g})")
    return out


def failed_resamples(n_failed: int, n_boot: int) -> list[str]:
    if n_boot and n_failed / n_boot > FAILED_BOOT:
        return [f"{n_failed} of {n_boot} bootstrap resamples could not be fitted; intervals use the rest"]
    return []


def leave_one_budget_out(
    groups: np.ndarray,
    budgets: np.ndarray,
    refit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]],
    target: np.ndarray,
    min_groups: int = 3,
) -> pd.DataFrame:
    """For each budget: refit on everything else, predict the held-out rows, report the error.

    groups[i] indexes `budgets`, or is -1 for rows that belong to no budget (always used for fitting).
    `refit(train_mask)` returns a predictor `f(test_mask) -> predictions`; `target` holds the observed
    values. Errors are relative: prediction / observed - 1.
    """
    columns = ["budget", "n_points", "mean_abs_rel_error", "max_abs_rel_error"]
    rows = []
    uniq = np.unique(groups[groups >= 0])
    if uniq.size < min_groups:
        return pd.DataFrame(columns=columns)
    for g in uniq:
        test = groups == g
        try:
            pred = refit(~test)(test)
        except ValueError:  # too few points left to refit without this budget
            continue
        rel = np.asarray(pred, dtype=float) / target[test] - 1.0
        rows.append([float(budgets[g]), int(test.sum()), float(np.mean(np.abs(rel))), float(np.max(np.abs(rel)))])
    return pd.DataFrame(rows, columns=columns)
