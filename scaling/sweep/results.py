"""The results table of a run store: one loader, which only reads.

The run folders are the source of truth; `results.parquet/.csv` are snapshots the store writes after
runs finish (medscale.scaling.sweep.store.RunStore.write_results). Reading never writes, so a read-only
store (a collaborator's, an archive) can be analysed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import RunStore


def load_results(runs_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(results, curves) of the store at `runs_dir`, rebuilt from its run folders; curves is None when
    no run has recorded one."""
    store = RunStore(runs_dir)
    if not store.runs_dir.exists():
        raise UserError(f"{runs_dir}: no runs/ folder here; give the --out folder of a `medscale sweep`")
    results = store.results_frame()
    curves = store.curves_frame()
    return results, (curves if len(curves) else None)
