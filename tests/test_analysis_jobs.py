"""The analysis's process pool (analysis/bootstrap.py: worker_pool): one pool for every map inside the block,
the same numbers with any number of processes, and a clear error for a bad $MEDSCALE_ANALYSIS_JOBS."""
from __future__ import annotations

import os

import numpy as np
import pytest

from medscale.analysis import bootstrap
from medscale.analysis.errors import AnalysisError
from medscale.analysis.report import analyze_results
from medscale.analysis.synthetic import isoflop_table


def _pid(_) -> int:
    return os.getpid()


def test_every_map_in_the_block_runs_on_the_same_pool_and_the_pool_ends_with_it():
    with bootstrap.worker_pool(2) as jobs:
        assert jobs == 2
        first = set(bootstrap.parallel_map(_pid, list(range(8)), 2))
        second = set(bootstrap.parallel_map(_pid, list(range(8)), 2))
        with bootstrap.worker_pool(2):  # nested: the outer pool serves
            third = set(bootstrap.parallel_map(_pid, list(range(8)), 2))
    assert os.getpid() not in first and len(first | second | third) <= 2
    assert bootstrap._active_pool() is None
    assert bootstrap.parallel_map(_pid, [0, 1], 1) == [os.getpid()] * 2  # one job: no processes at all


def test_the_environment_sets_the_default_and_a_bad_value_says_what_to_set(monkeypatch):
    monkeypatch.setenv(bootstrap.JOBS_ENV, "3")
    assert bootstrap.default_jobs() == 3
    monkeypatch.setenv(bootstrap.JOBS_ENV, "many")
    with pytest.raises(AnalysisError, match="MEDSCALE_ANALYSIS_JOBS='many'.*whole number"):
        bootstrap.default_jobs()
    monkeypatch.delenv(bootstrap.JOBS_ENV)
    assert bootstrap.default_jobs() == (os.cpu_count() or 1)


def test_a_report_analysis_is_the_same_on_two_processes():
    """Every fit's bootstrap and the families' validation folds (selection.rolling_origin) run on the pool."""
    df = isoflop_table(sizes=5, noise=0.01, seed=5)
    one = analyze_results(df, n_boot=24, seed=0, n_jobs=1).objectives["decoder"]
    with bootstrap.worker_pool(2) as jobs:
        two = analyze_results(df, n_boot=24, seed=0, n_jobs=jobs).objectives["decoder"]
    assert set(one.fits) == set(two.fits) and 3 in one.fits
    for k in one.fits:
        a, b = one.allocs[k], two.allocs[k]
        assert (a.n_opt.to_dict(), a.d_opt.to_dict()) == (b.n_opt.to_dict(), b.d_opt.to_dict()), k
    a, b = one.fits[3].estimates_, two.fits[3].estimates_
    assert {k: v.to_dict() for k, v in a.items()} == {k: v.to_dict() for k, v in b.items()}
    assert np.isfinite(a["alpha"].low) and a["alpha"].low < a["alpha"].high  # the bootstrap ran
    assert one.families is not None and one.families.summary.equals(two.families.summary)
    assert one.families_n_opt.to_dict() == two.families_n_opt.to_dict()
