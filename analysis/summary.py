"""`fit_table`: one call from a results table to a fit with intervals, and its JSON summary (`medscale fit`)."""
from __future__ import annotations

from .conventions import (COMPUTE_CONVENTIONS, PARAMS_COLUMNS, PARAMS_CONVENTIONS, compute_6nd,
                          full_flops_per_token, tokens_for_compute)
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .bootstrap import Estimate
from .bounds import at_bound
from .data_constrained import DataConstrainedFit
from .envelope import EnvelopeFit
from .extrapolation import hold_out_largest, isoflop_hold_out
from .errors import AnalysisError
from .inputs import budget_groups, check_available_tokens, compute_mismatch, positive, require_columns
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
    extrapolation: pd.DataFrame | None = None  # leave-one-budget-out
    hold_out: dict | None = None  # the largest budget (or N) predicted from the rest
    optimal: Allocation | None = None
    conventions: dict = field(default_factory=dict)

    @property
    def estimates(self) -> dict[str, Estimate]:
        return self.fit.estimates_

    def allocation(self, budget: float, *, max_tokens: float | None = None, max_epochs: float = 1.0) -> Allocation:
        return compute_optimal(self.fit, budget, max_tokens=max_tokens, max_epochs=max_epochs)

    def to_dict(self) -> dict:
        out: dict = {"approach": self.approach, "n_points": self.n_points}
        out.update({k: v.to_dict() for k, v in self.estimates.items()})
        # parameters whose estimate (or interval) sits at the optimiser's bound, with what that means
        out["at_bound"] = [b.to_dict() for b in at_bound(self.fit)]
        out["interval_level"] = getattr(self.fit, "level", None)
        out["n_boot"] = getattr(self.fit, "n_boot", None)
        out["columns"] = dict(self.columns)
        if self.approach == 2:
            out["minima"] = _records(self.fit.minima_)
            out["profile"] = self.fit.profile
            if self.fit.profile == "curve":  # the plain parabola, for comparison
                out["parabola"] = {k: v.to_dict() for k, v in self.fit.parabola_estimates_.items()}
        if self.approach == 1:
            out["envelope_points"] = int(len(self.fit.points_))
        if self.extrapolation is not None and len(self.extrapolation):
            out["leave_one_budget_out"] = _records(self.extrapolation)
        out["law"] = getattr(self.fit, "law", "chinchilla") if self.approach == 3 else None
        if self.conventions:
            out["conventions"] = dict(self.conventions)
        out["extrapolation"] = _plain_tree(self.hold_out)
        if self.optimal is not None:
            out["optimal"] = _optimal_dict(self.optimal)
        out["warnings"] = list(self.warnings)
        out["notes"] = list(self.notes)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _optimal_dict(a: Allocation) -> dict:
    d = {"budget": a.budget, "available_tokens": a.max_tokens, "N": a.n_opt.to_dict(), "D": a.d_opt.to_dict()}
    d["epochs"] = (a.epochs.to_dict() if a.epochs is not None else
                   {"value": a.d_opt.value / a.max_tokens, "interval": [None, None]} if a.max_tokens else None)
    d.update({"loss": None if a.loss is None else a.loss.to_dict(), "compute_convention": a.compute_convention,
              "token_limited": a.token_limited, "notes": list(a.notes), "warnings": list(a.warnings),
              "beyond_data": _plain_tree(a.beyond_data)})
    return d


def _plain_tree(v):
    if isinstance(v, dict):
        return {k: _plain_tree(x) for k, x in v.items()}
    return _plain(v) if v is not None else None


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
    n_boot: int = 1000,
    seed: int = 0,
    budget_col: str | None = None,
    run_col: str = "run_id",
    n_jobs: int | None = 1,
    unique_tokens: str | None = None,
    seed_col: str | None = "seed",
    lr_col: str | None = "lr",
    params_convention: str | None = None,
    compute_convention: str = "auto",
    flops_col: str = "flops_full",
    budget: float | None = None,
    available_tokens: float | None = None,
    excess_params: bool = True,
    two_stage: bool = False,
    base: dict | None = None,
) -> FitResult:
    """Fit a scaling law to a table (DataFrame, or a .csv/.parquet path) by column names.

    Approach 1: envelope (one point per run here, unless rows share a `run_col` value and form curves);
    2: IsoFLOP parabolas grouped by `budget_col` or, without it, by compute; 3: parametric L(N, D), or with
    `unique_tokens` (a column of each run's unique training tokens U) the data-constrained L(N, D, U) (with
    the parameter-excess term R*_N unless `excess_params=False`; `two_stage` holds a base law fixed: `base`,
    a dict of E, A, B, alpha, beta, or one fitted to the runs of one epoch or less).
    Give tokens, compute, or both: D = C / (6N) or C = 6ND fills the missing one. Rows that share a point
    are replicates: seeds (`seed_col`) are averaged, the best learning rate (`lr_col`) is kept.

    Conventions: `params_convention` ('total' or 'non_embedding') takes N from the table's params_total or
    params_non_embedding column instead of `params`; `compute_convention='full'` spends `budget` on the full
    FLOP count (`flops_col`, attention and head included) rather than 6N per token; 'auto' (the default) is
    'full' when the table has `flops_col` and the law is parametric (Approaches 1 and 2 only know the compute
    their runs were grouped by). With `budget` (FLOPs) the
    result carries `optimal` (N, D, epochs), under a cap of `available_tokens` unique tokens when given.
    """
    if not isinstance(df, pd.DataFrame):
        df = read_table(df)
    if approach not in (1, 2, 3):
        raise AnalysisError(f"approach must be 1 (envelope), 2 (IsoFLOP) or 3 (parametric); got {approach!r}")
    if compute_convention == "auto":  # the full count when the table has it (docs/SCIENCE.md says why)
        compute_convention = "full" if flops_col in df.columns and approach == 3 else "6nd"
    if compute_convention not in COMPUTE_CONVENTIONS:
        raise AnalysisError(f"compute convention {compute_convention!r}: choose one of {COMPUTE_CONVENTIONS}")
    if params_convention is not None:
        if params_convention not in PARAMS_CONVENTIONS:
            raise AnalysisError(f"params convention {params_convention!r}: choose one of {PARAMS_CONVENTIONS}")
        params = PARAMS_COLUMNS[params_convention] if PARAMS_COLUMNS[params_convention] in df.columns else params
        require_columns(df, [PARAMS_COLUMNS[params_convention]])
    if params is None:
        raise AnalysisError("a params column (N, non-embedding parameters) is needed for every approach")
    if tokens is None and compute is None:
        raise AnalysisError("give a tokens column, a compute column, or both")
    if unique_tokens is not None and approach != 3:
        raise AnalysisError("--unique-tokens fits the data-constrained law, which is Approach 3")
    if (two_stage or base is not None or not excess_params) and unique_tokens is None:
        raise AnalysisError("--two-stage, --base and --no-excess-params shape the data-constrained law: give "
                            "--unique-tokens COL too")
    require_columns(df, [c for c in (params, loss, tokens, compute, budget_col, unique_tokens) if c is not None])
    if compute_convention == "full":
        require_columns(df, [flops_col])
    if len(df) == 0:
        raise AnalysisError("the table has no rows")
    if budget is not None and not 0 < budget < np.inf:
        raise AnalysisError(f"--budget {budget:g}: give the FLOPs to allocate, a positive number (e.g. 1e21)")
    if available_tokens is not None:
        available_tokens = _available(df, available_tokens)
    notes: list[str] = []
    warnings: list[str] = []
    N = positive(df[params], params)
    L = positive(df[loss], loss)
    if tokens is not None:
        D = positive(df[tokens], tokens)
        if compute is not None:
            C = positive(df[compute], compute)
            mismatch = compute_mismatch(C, N, D, names={"params": params, "tokens": tokens, "compute": compute},
                                        approach=approach)
            warnings += [mismatch] if mismatch else []
        else:
            C = compute_6nd(N, D)
            notes.append(f"compute derived as C = 6 N D from {params!r} and {tokens!r}")
    else:
        C = positive(df[compute], compute)
        D = tokens_for_compute(C, N)
        notes.append(f"tokens derived as D = C / (6 N) from {compute!r} and {params!r} (no tokens column given)")
    columns = {"params": params, "loss": loss, "tokens": tokens, "compute": compute, "budget": budget_col,
               "unique_tokens": unique_tokens}
    labels = df[budget_col].to_numpy() if budget_col is not None else None
    reps = {"seeds": df[seed_col].to_numpy() if seed_col and seed_col in df.columns else None,
            "lrs": df[lr_col].to_numpy(dtype=float) if lr_col and lr_col in df.columns else None}
    fpt = None
    if compute_convention == "full":
        fpt = full_flops_per_token(N, D, positive(df[flops_col], flops_col))
        notes.append(f"compute convention full: FLOPs per token as a function of N fitted from {flops_col!r}")

    extrapolation = hold = None
    if approach == 3 and unique_tokens is not None:
        U = positive(df[unique_tokens], unique_tokens)
        law = {"excess_params": excess_params, "two_stage": two_stage, "base": base}
        fit = DataConstrainedFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs, **law).fit(
            N, D, U, L, budget=labels, seed_col=reps["seeds"], lr=reps["lrs"])
        hold = _hold_out(fit, lambda t: DataConstrainedFit(n_boot=0, **law).fit(
            t.params, t.tokens, t.unique_tokens, t.loss))
    elif approach == 3:
        fit = ParametricFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(N, D, L, budget=labels, **reps)
        extrapolation = _lobo_parametric(fit, C, labels, notes)
        hold = _hold_out(fit, lambda t: ParametricFit(n_boot=0).fit(t.params, t.tokens, t.loss))
    elif approach == 2:
        fit = IsoFlopFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(N, C, L, budget=labels, **reps)
        extrapolation = fit.leave_one_budget_out()
        hold = isoflop_hold_out(fit)
    else:
        run_id = df[run_col].to_numpy() if run_col in df.columns else np.arange(len(df))
        fit = EnvelopeFit(n_boot=n_boot, seed=seed).fit(run_id, N, C, L)
    optimal = None
    if budget is not None:
        optimal = compute_optimal(fit, budget, max_tokens=available_tokens, flops_per_token=fpt)
    elif available_tokens is not None:
        raise AnalysisError("--available-tokens needs --budget (the FLOPs to allocate)")
    return FitResult(
        approach=approach,
        fit=fit,
        n_points=fit.n_points_,
        columns=columns,
        warnings=warnings + list(fit.warnings_) + (list(optimal.warnings) if optimal is not None else []),
        notes=notes + list(fit.notes_),
        extrapolation=extrapolation,
        hold_out=hold,
        optimal=optimal,
        conventions={"params": params_convention or f"column {params}", "compute": compute_convention},
    )


def _available(df: pd.DataFrame, tokens: float) -> float:
    """--available-tokens, refused below one training window: the runs' shortest seq_len when the table has one."""
    if "seq_len" in df.columns and pd.to_numeric(df["seq_len"], errors="coerce").notna().any():
        seq = float(pd.to_numeric(df["seq_len"], errors="coerce").min())
        return check_available_tokens(tokens, "--available-tokens", minimum=seq,
                                      window=f"{seq:g} tokens: the shortest seq_len in the table")
    return check_available_tokens(tokens, "--available-tokens")


def _hold_out(fit, refit) -> dict | None:
    """Hold out the largest budget (budget labels, or compute groups that look like IsoFLOP budgets) or N."""
    data = fit.data_.copy()
    if "budget" not in data or not np.isfinite(data["budget"].astype(float)).any():
        labels, values = budget_groups(compute_6nd(data["params"].to_numpy(), data["tokens"].to_numpy()))
        sizes = np.bincount(labels)
        if LOBO_GROUPS[0] <= values.size <= LOBO_GROUPS[1] and sizes.min() >= 3:
            data["budget"] = values[labels]
        else:
            data = data.drop(columns=["budget"], errors="ignore")
    return hold_out_largest(data, refit)


def _lobo_parametric(fit: ParametricFit, C: np.ndarray, budget, notes: list[str]) -> pd.DataFrame | None:
    if budget is not None:
        return fit.leave_one_budget_out()
    labels, values = budget_groups(compute_6nd(fit.data_["params"].to_numpy(), fit.data_["tokens"].to_numpy()))
    sizes = np.bincount(labels)
    if LOBO_GROUPS[0] <= values.size <= LOBO_GROUPS[1] and sizes.min() >= 3:
        notes.append("leave-one-budget-out groups runs by compute (values within 10% are one budget)")
        return fit.leave_one_budget_out(values[labels])
    return None
