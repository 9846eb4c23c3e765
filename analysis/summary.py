"""`fit_table`: one call from a results table to a fit with intervals, and its JSON summary (`medscale fit`)."""
from __future__ import annotations

from .conventions import compute_6nd, tokens_for_compute
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .bootstrap import Estimate
from .envelope import EnvelopeFit
from .errors import AnalysisError
from .inputs import budget_groups, positive, require_columns
from .isoflop import IsoFlopFit
from .optimal import Allocation, compute_optimal
from .parametric import ParametricFit

# Leave-one-budget-out for Approach 3 runs on compute clusters only when they look like IsoFLOP budgets.
LOBO_GROUPS = (3, 20)


@dataclass
class FitResult:
    approach: int
    fit: object
    n_points: int
    columns: dict
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extrapolation: pd.DataFrame | None = None

    @property
    def estimates(self) -> dict[str, Estimate]:
        return self.fit.estimates_

    def allocation(self, budget: float, *, max_tokens: float | None = None, max_epochs: float = 1.0) -> Allocation:
        return compute_optimal(self.fit, budget, max_tokens=max_tokens, max_epochs=max_epochs)

    def to_dict(self) -> dict:
        out: dict = {"approach": self.approach, "n_points": self.n_points}
        out.update({k: v.to_dict() for k, v in self.estimates.items()})
        out["interval_level"] = getattr(self.fit, "level", None)
        out["n_boot"] = getattr(self.fit, "n_boot", None)
        out["columns"] = dict(self.columns)
        if self.approach == 2:
            out["minima"] = _records(self.fit.minima_)
        if self.approach == 1:
            out["envelope_points"] = int(len(self.fit.points_))
        if self.extrapolation is not None and len(self.extrapolation):
            out["leave_one_budget_out"] = _records(self.extrapolation)
        out["warnings"] = list(self.warnings)
        out["notes"] = list(self.notes)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _records(df: pd.DataFrame) -> list[dict]:
    recs = df.to_dict(orient="records")
    return [{k: _plain(v) for k, v in r.items()} for r in recs]


def _plain(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"no such file: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def fit_table(
    df: pd.DataFrame | str | Path,
    *,
    params: str | None = None,
    loss: str,
    tokens: str | None = None,
    compute: str | None = None,
    approach: int = 3,
    n_boot: int = 200,
    seed: int = 0,
    budget_col: str | None = None,
    run_col: str = "run_id",
    n_jobs: int | None = 1,
) -> FitResult:
    """Fit a scaling law to a table (DataFrame, or a .csv/.parquet path) by column names.

    Approach 1: envelope (one point per run here, unless rows share a `run_col` value and form curves);
    2: IsoFLOP parabolas grouped by `budget_col` or, without it, by compute; 3: parametric L(N, D).
    Give tokens, compute, or both: D = C / (6N) or C = 6ND fills the missing one.
    """
    if not isinstance(df, pd.DataFrame):
        df = read_table(df)
    if approach not in (1, 2, 3):
        raise AnalysisError(f"approach must be 1 (envelope), 2 (IsoFLOP) or 3 (parametric); got {approach!r}")
    if params is None:
        raise AnalysisError("a params column (N, non-embedding parameters) is needed for every approach")
    if tokens is None and compute is None:
        raise AnalysisError("give a tokens column, a compute column, or both")
    require_columns(df, [c for c in (params, loss, tokens, compute, budget_col) if c is not None])
    if len(df) == 0:
        raise AnalysisError("the table has no rows")
    notes: list[str] = []
    N = positive(df[params], params)
    L = positive(df[loss], loss)
    if tokens is not None:
        D = positive(df[tokens], tokens)
        if compute is not None:
            C = positive(df[compute], compute)
        else:
            C = compute_6nd(N, D)
            notes.append(f"compute derived as C = 6 N D from {params!r} and {tokens!r}")
    else:
        C = positive(df[compute], compute)
        D = tokens_for_compute(C, N)
        notes.append(f"tokens derived as D = C / (6 N) from {compute!r} and {params!r} (no tokens column given)")
    columns = {"params": params, "loss": loss, "tokens": tokens, "compute": compute, "budget": budget_col}
    budget = df[budget_col].to_numpy() if budget_col is not None else None

    extrapolation = None
    if approach == 3:
        fit = ParametricFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(N, D, L, budget=budget)
        extrapolation = _lobo_parametric(fit, C, budget, notes)
    elif approach == 2:
        fit = IsoFlopFit(n_boot=n_boot, seed=seed).fit(N, C, L, budget=budget)
        extrapolation = fit.leave_one_budget_out()
    else:
        run_id = df[run_col].to_numpy() if run_col in df.columns else np.arange(len(df))
        fit = EnvelopeFit(n_boot=n_boot, seed=seed).fit(run_id, N, C, L)
    return FitResult(
        approach=approach,
        fit=fit,
        n_points=fit.n_points_,
        columns=columns,
        warnings=list(fit.warnings_),
        notes=notes + list(fit.notes_),
        extrapolation=extrapolation,
    )


def _lobo_parametric(fit: ParametricFit, C: np.ndarray, budget, notes: list[str]) -> pd.DataFrame | None:
    if budget is not None:
        return fit.leave_one_budget_out()
    labels, values = budget_groups(compute_6nd(fit.data_["params"].to_numpy(), fit.data_["tokens"].to_numpy()))
    sizes = np.bincount(labels)
    if LOBO_GROUPS[0] <= values.size <= LOBO_GROUPS[1] and sizes.min() >= 3:
        notes.append("leave-one-budget-out groups runs by compute (values within 10% are one budget)")
        return fit.leave_one_budget_out(values[labels])
    return None
