"""Downstream metrics with intervals from a bootstrap over subjects (numpy only).

Binary tasks: AUROC, AUPRC (average precision, sklearn's step-wise definition), Brier score and expected
calibration error (ECE: 10 equal-width probability bins, |mean label - mean score| weighted by the bin's
share). Regression: MAE and RMSE (the expected value, which the simulator exports as the ceiling, is the
RMSE-optimal prediction; MAE's optimum is the conditional median, so a model can beat that "ceiling" on MAE).

A subject contributes several samples (one per admission, check-up, ...), which are not independent, so
intervals resample SUBJECTS with replacement: each resample is a vector of multiplicities per row (every
row of a drawn subject counts once per draw), and every metric is computed with those weights, which is
exactly the metric of the resampled rows. All resamples are evaluated in one vectorised pass.
"""
from __future__ import annotations

import numpy as np

from .bootstrap import DEFAULT_LEVEL
from .errors import AnalysisError

BINARY_METRICS = ("auroc", "auprc", "brier", "ece")
REGRESSION_METRICS = ("mae", "rmse")
ECE_BINS = 10


def _as_2d(w: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones((1, n)) if w is None else np.atleast_2d(np.asarray(w, dtype=np.float64))


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by descending score and the start index of each group of tied scores."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    return order, starts


def auroc(y, score, w=None) -> np.ndarray:
    """Weighted AUROC per row of w (B, n); ties count one half. NaN where a class has no weight."""
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    W = _as_2d(w, y.size)
    order, starts = _tie_groups(score)
    pos = np.add.reduceat((W * y)[:, order], starts, axis=1)
    neg = np.add.reduceat((W * (1 - y))[:, order], starts, axis=1)
    P, N = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = N[:, None] - np.cumsum(neg, axis=1)  # negatives with strictly lower scores
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (P * N)


def auprc(y, score, w=None) -> np.ndarray:
    """Weighted average precision: sum over thresholds of (recall step) x precision (sklearn's definition)."""
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    W = _as_2d(w, y.size)
    order, starts = _tie_groups(score)
    pos = np.add.reduceat((W * y)[:, order], starts, axis=1)
    allw = np.add.reduceat(W[:, order], starts, axis=1)
    cum_pos, cum_all = np.cumsum(pos, axis=1), np.cumsum(allw, axis=1)
    P = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cum_all > 0, cum_pos / np.where(cum_all > 0, cum_all, 1), 0.0)
        return (pos * precision).sum(axis=1) / P


def brier(y, score, w=None) -> np.ndarray:
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    W = _as_2d(w, y.size)
    return (W * (y - score) ** 2).sum(axis=1) / W.sum(axis=1)


def ece(y, score, w=None, n_bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error over equal-width bins of the score in [0, 1]."""
    y, score = np.asarray(y, dtype=np.float64), np.clip(np.asarray(score, dtype=np.float64), 0, 1)
    W = _as_2d(w, y.size)
    b = np.minimum((score * n_bins).astype(np.int64), n_bins - 1)
    onehot = np.zeros((y.size, n_bins))
    onehot[np.arange(y.size), b] = 1.0
    resid = (W * (y - score)) @ onehot  # (B, bins): sum of w (y - p) per bin
    return np.abs(resid).sum(axis=1) / W.sum(axis=1)


def mae(y, pred, w=None) -> np.ndarray:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    W = _as_2d(w, y.size)
    return (W * np.abs(y - pred)).sum(axis=1) / W.sum(axis=1)


def rmse(y, pred, w=None) -> np.ndarray:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    W = _as_2d(w, y.size)
    return np.sqrt((W * (y - pred) ** 2).sum(axis=1) / W.sum(axis=1))


METRIC_FUNCTIONS = {"auroc": auroc, "auprc": auprc, "brier": brier, "ece": ece, "mae": mae, "rmse": rmse}


def subject_bootstrap_weights(subject_ids, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_rows) multiplicities: subjects drawn with replacement, each row weighted by its
    subject's draw count."""
    _, subject_of_row = np.unique(np.asarray(subject_ids), return_inverse=True)
    n_subjects = int(subject_of_row.max()) + 1 if subject_of_row.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_subjects, size=(n_boot, n_subjects))
    counts = np.zeros((n_boot, n_subjects))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_subjects), draws.ravel()), 1.0)
    return counts[:, subject_of_row]


def resample_id(subject_ids, n_boot: int, seed: int) -> str:
    """A name for the subject resamples `subject_bootstrap_weights(subject_ids, n_boot, seed)` draws: two
    evaluations with the same id were scored on the same resampled subjects, so their draws are paired."""
    import hashlib

    ids = np.ascontiguousarray(np.asarray(subject_ids).astype(np.int64))
    h = hashlib.sha256(ids.tobytes())
    h.update(f"{n_boot}:{seed}".encode())
    return h.hexdigest()[:16]


def evaluate(y, score, subject_ids, *, kind: str = "binary", metrics=None, n_boot: int = 200,
             level: float = DEFAULT_LEVEL, seed: int = 0, return_draws: bool = False, weights=None):
    """metric -> (value, low, high): the point estimate on all rows and a percentile interval of the
    subject bootstrap. kind 'binary' (score = probability of the positive class) or 'regression'.

    Paired comparisons: the resamples depend only on (subject_ids, n_boot, seed), so every model scored on
    the same rows with the same seed sees the same resampled subjects; with `return_draws` the result is
    (intervals, {metric: draws [n_boot]}) (NaN where a resample is undefined, e.g. one class only), whose
    differences between models give paired intervals (analysis/paired.py). `weights` passes precomputed
    resample weights (n_boot, n_rows) instead."""
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise AnalysisError(f"labels and scores must be 1-D and the same length; got {y.shape} and {score.shape}")
    if y.size == 0:
        raise AnalysisError("no samples to evaluate")
    if not np.all(np.isfinite(score)):
        raise AnalysisError("scores contain NaN or infinite values")
    names = tuple(metrics or (BINARY_METRICS if kind == "binary" else REGRESSION_METRICS))
    if kind == "binary" and not np.all((y == 0) | (y == 1)):
        raise AnalysisError("binary labels must be 0 or 1")
    W = weights if weights is not None else (subject_bootstrap_weights(subject_ids, n_boot, seed) if n_boot else None)
    alpha = (1 - level) / 2
    out, all_draws = {}, {}
    for name in names:
        fn = METRIC_FUNCTIONS[name]
        value = float(fn(y, score)[0])
        if W is None:
            out[name] = (value, float("nan"), float("nan"))
            all_draws[name] = np.zeros(0)
            continue
        draws = fn(y, score, W)
        draws = np.where(np.isfinite(draws), draws, np.nan)
        all_draws[name] = draws
        ok = draws[np.isfinite(draws)]
        lo, hi = (np.quantile(ok, [alpha, 1 - alpha]) if ok.size else (np.nan, np.nan))
        out[name] = (value, float(lo), float(hi))
    return (out, all_draws) if return_draws else out


def evaluate_paired(y, scores: dict, subject_ids, *, kind: str = "binary", metrics=None, n_boot: int = 200,
                    level: float = DEFAULT_LEVEL, seed: int = 0) -> tuple[dict, dict]:
    """Several models' scores on the same rows with one set of subject resamples: ({model: intervals},
    {model: {metric: draws}}); see `evaluate`."""
    W = subject_bootstrap_weights(subject_ids, n_boot, seed) if n_boot else None
    res, draws = {}, {}
    for name, score in scores.items():
        res[name], draws[name] = evaluate(y, score, subject_ids, kind=kind, metrics=metrics, n_boot=n_boot,
                                          level=level, seed=seed, return_draws=True, weights=W)
    return res, draws


def gap_to_ceiling(metric: str, value: float, ceiling: float) -> float:
    """How far a result is from the best achievable, positive when worse: ceiling - value for metrics
    where higher is better (AUROC, AUPRC), value - ceiling for the others."""
    return (ceiling - value) if metric in ("auroc", "auprc") else (value - ceiling)
