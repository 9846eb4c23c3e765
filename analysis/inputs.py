"""Checking and shaping user tables: every bad-input message a user sees is written here."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .errors import AnalysisError

# Compute values closer than this factor are one IsoFLOP budget (runs land near, not on, their budget).
BUDGET_RTOL = 0.1


def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"column(s) {', '.join(map(repr, missing))} not in the table; available: "
            f"{', '.join(map(str, df.columns))}"
        )


def positive(values, name: str) -> np.ndarray:
    """A float array of strictly positive finite values, or an AnalysisError saying which rows are not."""
    try:
        arr = np.asarray(pd.to_numeric(pd.Series(values), errors="raise"), dtype=float)
    except (ValueError, TypeError) as e:
        raise AnalysisError(f"column {name!r} must be numeric: {e}") from None
    bad_nan = np.flatnonzero(~np.isfinite(arr))
    if bad_nan.size:
        raise AnalysisError(
            f"column {name!r} has {bad_nan.size} missing or infinite value(s) (rows {_rows(bad_nan)}); "
            "drop failed or unfinished runs first"
        )
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise AnalysisError(
            f"column {name!r} must be > 0 for a log-log fit; {bad.size} row(s) are not (rows {_rows(bad)})"
        )
    return arr


def _rows(idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (", ..." if idx.size > limit else "")


def need_points(n: int, needed: int, what: str) -> None:
    if n < needed:
        raise AnalysisError(f"{what} needs at least {needed} points; got {n}")


def best_per_point(keys: list[np.ndarray], loss: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices keeping the lowest loss among rows with equal keys (runs differing only in lr or seed).

    Returns the kept row indices (in input order) and how many points had more than one run.
    """
    frame = pd.DataFrame({f"k{i}": np.round(np.log(k), 9) for i, k in enumerate(keys)})
    frame["loss"] = loss
    frame["row"] = np.arange(len(loss))
    key_cols = [c for c in frame.columns if c.startswith("k")]
    counts = frame.groupby(key_cols, sort=False)["row"].transform("size")
    keep = frame.sort_values("loss", kind="stable").drop_duplicates(key_cols)["row"].to_numpy()
    n_multi = int(frame.loc[counts > 1, key_cols].drop_duplicates().shape[0])
    return np.sort(keep), n_multi


def budget_groups(compute: np.ndarray, rtol: float = BUDGET_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Group compute values within a factor (1 + rtol) of their neighbours.

    Returns (label per row, budget per group) with the budget the geometric mean of its group.
    """
    logc = np.log(np.asarray(compute, dtype=float))
    order = np.argsort(logc)
    new = np.r_[True, np.diff(logc[order]) > np.log1p(rtol)]
    labels = np.empty(logc.size, dtype=int)
    labels[order] = np.cumsum(new) - 1
    budgets = np.exp(np.array([logc[labels == g].mean() for g in range(labels.max() + 1)]))
    return labels, budgets


def labels_from(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group rows by exact value of a budget column: (label per row, value per group)."""
    uniq, labels = np.unique(np.asarray(values, dtype=float), return_inverse=True)
    return labels.ravel(), uniq


class Replicates:
    """Per kept point: the mean loss over seeds (`loss`), its spread (`sd`, NaN with one seed), seeds averaged."""

    def __init__(self, loss: np.ndarray, sd: np.ndarray, n_seeds: np.ndarray):
        self.loss, self.sd, self.n_seeds = loss, sd, n_seeds


def average_replicates(keys: dict[str, np.ndarray], loss: np.ndarray, *, seed=None, lr=None
                       ) -> tuple[np.ndarray, Replicates, list[str]]:
    """One point per distinct `keys`: seeds averaged, then the best learning rate.

    The minimum over seeds is biased low (it picks the luckiest draw of noise), so seeds are averaged and their
    spread is each point's noise; learning rates are a choice, so the best one is kept. Without seed and lr
    labels, rows with equal keys cannot be told apart: the lowest loss is kept (as if they were learning
    rates) and a note says so. Returns (row index representing each point, Replicates, notes).
    """
    loss = np.asarray(loss, dtype=float)
    n = loss.size
    frame = pd.DataFrame({f"k{i}": np.round(np.log(np.asarray(v, dtype=float)), 9) for i, v in enumerate(keys.values())})
    key_cols = list(frame.columns)
    frame["lr"] = 0.0 if lr is None else np.asarray(lr, dtype=float)
    frame["seed"] = np.arange(n) if seed is None else np.asarray(seed)
    frame["loss"] = loss
    frame["row"] = np.arange(n)
    notes: list[str] = []
    if seed is None and lr is None:
        keep, n_multi = best_per_point(list(keys.values()), loss)
        if n_multi:
            notes.append(f"{n_multi} point(s) had several runs and no seed or lr column tells them apart: the lowest "
                         "loss of each was kept (biased low if they are seeds; give the seed and lr columns)")
        return keep, Replicates(loss[keep], np.full(keep.size, np.nan), np.ones(keep.size, int)), notes
    if seed is None:  # rows differing only in lr: each is its own "seed group" of one
        frame["seed"] = 0
    by = frame.groupby(key_cols + ["lr"], sort=False)
    agg = by.agg(loss=("loss", "mean"), sd=("loss", lambda x: x.std(ddof=1) if len(x) > 1 else np.nan),
                 n_seeds=("loss", "size"), row=("row", "min")).reset_index()
    best = agg.sort_values("loss", kind="stable").drop_duplicates(key_cols).sort_values("row")
    n_lrs = agg.groupby(key_cols).size()
    if (agg["n_seeds"] > 1).any():
        notes.append(f"{int((agg['n_seeds'] > 1).sum())} point(s) had several seeds: their losses were averaged "
                     "(the spread is each point's noise); not the minimum, which is biased low")
    if (n_lrs > 1).any():
        notes.append(f"{int((n_lrs > 1).sum())} point(s) had several learning rates: the best (seed-averaged) was kept")
    return (best["row"].to_numpy(), Replicates(best["loss"].to_numpy(), best["sd"].to_numpy(),
                                                best["n_seeds"].to_numpy()), notes)


# The fewest unique tokens a recommendation is made for when the runs' window length is unknown (`medscale fit`):
# one training window at medscale's default model.seq_len (scaling/sweep/spec.py). Fewer cannot fill one sequence.
MIN_UNIQUE_TOKENS = 128

# A compute column may differ from 6 N D by this fraction before rows are named (rounding, or budgets recorded as
# targets); a full FLOP count (attention and head) is larger still, and is named too.
COMPUTE_RTOL = 0.05


def check_available_tokens(value, option: str, *, minimum: float = MIN_UNIQUE_TOKENS,
                           window: str | None = None) -> float:
    """`value` unique tokens as a float, or an AnalysisError naming `option`: not a positive number, or fewer
    than one training window (`minimum` tokens; `window` says where that length comes from)."""
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise AnalysisError(f"{option} {v:g}: give the number of unique tokens available (a positive number, "
                            "e.g. the train split's token count)")
    if v < minimum:
        where = window or f"{minimum:g} tokens: medscale's default seq_len, as the table has no seq_len column"
        raise AnalysisError(f"{option} {v:g}: fewer unique tokens than one training window ({where}); no model "
                            f"can be trained on them, so no allocation is made. Give the unique tokens of the whole "
                            f"train split (its windows x sequence length), at least {minimum:g}")
    return v


def compute_mismatch(C, N, D, *, names: dict, approach: int) -> str | None:
    """A warning naming the rows whose compute differs from 6 N D by more than COMPUTE_RTOL, and which of the two
    the fit uses; None when every row agrees."""
    from .conventions import compute_6nd

    ratio = np.asarray(C, float) / compute_6nd(np.asarray(N, float), np.asarray(D, float))
    bad = np.flatnonzero(np.abs(np.log(ratio)) > np.log1p(COMPUTE_RTOL))
    if not bad.size:
        return None
    c, n, d = names["compute"], names["params"], names["tokens"]
    used = (f"Approach {approach} uses {c!r} (budgets, and D = C / (6 N)), not {d!r}" if approach in (1, 2) else
            f"Approach 3 fits N and D from {n!r} and {d!r}; {c!r} is not used")
    return (f"column {c!r} differs from 6 N D ({n!r} x {d!r}) by more than {COMPUTE_RTOL:.0%} in {bad.size} of "
            f"{ratio.size} rows (rows {_rows(bad)}: C / 6ND from {ratio[bad].min():.3g} to {ratio[bad].max():.3g}); "
            f"{used}. Check those rows; if the column is a full FLOP count (attention and head included) the "
            "difference is expected, and Approach 3 reads that count from --flops-col")
