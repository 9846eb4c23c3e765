"""Bootstrap plumbing shared by every fit: resample weights, percentile intervals, a parallel map.

A resample is a vector of integer multiplicities over the rows (the multinomial draw of a with-replacement
sample), so fits that sum over points take it as weights and never copy the data. All weights are drawn up
front from one seeded generator, which makes results independent of how many processes do the work.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import AnalysisError

DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a (bootstrap percentile) interval; NaN bounds when there was no bootstrap."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    def to_dict(self) -> dict:
        return {"value": _num(self.value), "interval": [_num(self.low), _num(self.high)]}

    @property
    def ratio(self) -> float:
        """high / low: the interval's width as a factor (for positive quantities)."""
        return self.high / self.low if self.low > 0 else float("inf")


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of a with-replacement resample of n rows."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def stratified_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities resampling rows with replacement within each group (e.g. an IsoFLOP budget)."""
    groups = np.asarray(groups)
    out = np.zeros((n_boot, groups.size))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_boot)
    return out


def interval(draws: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN draws (failed resamples).

    Infinite draws are legitimate values (a size that never saturates): they sort above every finite draw,
    so a bound that falls among them is infinite rather than NaN. Where there are any, the bounds are order
    statistics (the draw at or beyond each percentile) instead of interpolations, since interpolating
    towards infinity means nothing."""
    draws = np.asarray(draws, dtype=float)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    if draws.shape[0] == 0 or np.all(np.isnan(draws)):
        nan = np.full(draws.shape[1:], np.nan)
        return nan, nan
    if not np.isinf(draws).any():
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanpercentile(draws, q, axis=0)
        return lo, hi
    big = np.finfo(float).max
    finite = np.clip(draws, -big, big)
    with np.errstate(invalid="ignore"):
        lo = np.nanpercentile(finite, q[0], axis=0, method="lower")
        hi = np.nanpercentile(finite, q[1], axis=0, method="higher")
    unclip = lambda v: np.where(v >= big, np.inf, np.where(v <= -big, -np.inf, v))  # noqa: E731
    return unclip(lo), unclip(hi)


def exceedance(draws: np.ndarray, threshold: float) -> float:
    """Share of the (non-NaN) draws above `threshold`: e.g. the probability that a curve is still gaining
    beyond the largest size trained."""
    d = np.asarray(draws, dtype=float).ravel()
    d = d[~np.isnan(d)]
    return float(np.mean(d > threshold)) if d.size else float("nan")


def estimate(value: float, draws: np.ndarray | None, level: float = DEFAULT_LEVEL) -> Estimate:
    if draws is None or len(draws) == 0:
        return Estimate(float(value))
    lo, hi = interval(np.asarray(draws, dtype=float), level)
    return Estimate(float(value), float(lo), float(hi))


def _pool_context():
    # fork is cheap and needs no re-import, but not safe once a multithreaded runtime (JAX, when analysis
    # runs inside a training process) is loaded; elsewhere (macOS, Windows) spawn is the safe choice.
    if sys.platform.startswith("linux") and "jax" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


JOBS_ENV = "MEDSCALE_ANALYSIS_JOBS"  # processes for an analysis's fits; default: every core
_shared: list[tuple[int, ProcessPoolExecutor]] = []  # (owner pid, pool) of the enclosing worker_pool blocks


def default_jobs() -> int:
    """Processes an analysis uses when the caller does not say: $MEDSCALE_ANALYSIS_JOBS, else every core."""
    value = os.environ.get(JOBS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise AnalysisError(f"{JOBS_ENV}={value!r}: set it to a whole number of processes (1: no pool)") from None
    return os.cpu_count() or 1


@contextmanager
def worker_pool(n_jobs: int | None = None) -> Iterator[int]:
    """One pool of n_jobs processes (None: `default_jobs()`) for every parallel_map inside the block; yields
    n_jobs. A report makes a dozen maps: a pool each would pay the start-up (under spawn, re-importing the
    analysis) a dozen times. Results do not depend on it: work is split the same way with or without."""
    n_jobs = default_jobs() if n_jobs is None else max(1, int(n_jobs))
    if n_jobs == 1 or _active_pool() is not None:
        yield n_jobs
        return
    entry = (os.getpid(), ProcessPoolExecutor(max_workers=n_jobs, mp_context=_pool_context()))
    for _ in range(n_jobs):  # start the processes now: under spawn they import while this one fits
        entry[1].submit(os.getpid)
    _shared.append(entry)
    try:
        yield n_jobs
    finally:
        _shared.remove(entry)
        entry[1].shutdown(wait=True, cancel_futures=True)


def _active_pool() -> ProcessPoolExecutor | None:
    # a forked worker inherits the list; the pool is only its owner's to use
    return _shared[-1][1] if _shared and _shared[-1][0] == os.getpid() else None


def parallel_map(fn: Callable, chunks: Sequence, n_jobs: int | None = 1) -> list:
    """[fn(c) for c in chunks], over up to n_jobs processes (None: all cores), those of the enclosing
    `worker_pool` if there is one. fn must be picklable."""
    n_jobs = (os.cpu_count() or 1) if n_jobs is None else int(n_jobs)
    n_jobs = max(1, min(n_jobs, len(chunks)))
    if n_jobs == 1:
        return [fn(c) for c in chunks]
    pool = _active_pool()
    if pool is not None:
        return list(pool.map(fn, chunks))
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=_pool_context()) as ex:
        return list(ex.map(fn, chunks))


BLOCKS_PER_JOB = 4  # some resamples take many times longer to fit than others: small blocks even the load out


def split(weights: np.ndarray, n_jobs: int | None) -> list[np.ndarray]:
    """Row blocks of a weight matrix: one for one job, else BLOCKS_PER_JOB per job (taken as workers free up)."""
    n_jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, int(n_jobs))
    return [w for w in np.array_split(weights, 1 if n_jobs == 1 else BLOCKS_PER_JOB * n_jobs) if len(w)]
