"""`medscale design`: replay an adaptive sweep over runs someone already trained (analysis/design.py).

A pool row's loss is read only once the replay has chosen that row; at the end the target is predicted from the
chosen rows and, for comparison, from every pool row.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer

from medscale.analysis import design as ds
from medscale.analysis.design import Target, predict_target
from medscale.analysis.inputs import positive
from medscale.analysis.summary import read_table
from medscale.atomic import write_text
from medscale.scaling.errors import UserError
from medscale.scaling.meds_dev import with_cli_errors


def _say(message: str) -> None:
    from medscale.scaling.cli import out

    out.print(message, markup=False, highlight=False, soft_wrap=True)


def _pool(table: Path, params, tokens, loss, unique, compute) -> tuple[pd.DataFrame, np.ndarray]:
    from medscale.scaling.cli import _read_runs_table

    df = _read_runs_table(table)
    cols = [c for c in (params, tokens, loss, unique, compute) if c]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{table}: lacks column(s) {missing}; it has {list(df.columns)}: name the pool's columns "
                        "with --params, --tokens, --loss (and --unique-tokens, --compute where used)")
    if len(df) == 0:
        raise UserError(f"{table}: has no rows; the pool needs the runs to choose from, one per row")
    try:
        from medscale.analysis.design import pool_frame

        vals = {k: positive(df[c], c) if c else None
                for k, c in (("N", params), ("D", tokens), ("L", loss), ("U", unique), ("C", compute))}
        return pool_frame(vals["N"], vals["D"], vals["U"], vals["C"]), vals["L"]
    except ValueError as err:
        raise UserError(f"{table}: {err}") from None


def _target(path: Optional[Path], target_compute: Optional[float], params, tokens, loss, unique):
    if (path is None) == (target_compute is None):
        raise UserError("give exactly one target: --target PLANNED.csv (planned runs whose loss to pin down) or "
                        "--target-compute C (N_opt at C FLOPs)")
    if path is None:
        if not target_compute > 0:
            raise UserError(f"--target-compute {target_compute}: give a positive number of FLOPs, e.g. 1e21")
        return Target.n_opt(target_compute), None
    if not path.is_file():
        raise UserError(f"--target {path}: no such file; give a CSV of planned runs with the columns "
                        f"{[c for c in (params, tokens, unique) if c]}")
    plan = read_table(path)
    cols = [c for c in (params, tokens, unique) if c]
    missing = [c for c in cols if c not in plan.columns]
    if missing or len(plan) == 0:
        raise UserError(f"--target {path}: " + (f"lacks column(s) {missing}; " if missing else "has no rows; ")
                        + f"planned runs need the columns {cols} (the same names as the pool's)")
    try:
        vals = [positive(plan[c], c) for c in cols]
        truth = positive(plan[loss], loss) if loss in plan.columns else None
    except ValueError as err:
        raise UserError(f"--target {path}: {err}") from None
    return Target.planned(vals[0], vals[1], vals[2] if unique else None), truth


def _step_line(step, pool: pd.DataFrame, total: float) -> str:
    what = ", ".join(f"#{r} (N={pool['params'].iat[r]:.3g}, D={pool['tokens'].iat[r]:.3g}"
                     + ("" if np.isnan(s) else f", score {s:.3g}") + ")" for r, s in zip(step.rows, step.scores))
    ivs = "; ".join(f"{p:.4g} [{lo:.4g}, {hi:.4g}]" for p, lo, hi in zip(step.point, step.low, step.high))
    head = "initial design" if step.step == 0 else f"step {step.step}"
    return (f"{head}: chose {what}; spent {step.spent:.3g} FLOPs ({step.spent / total:.1%} of the pool); "
            f"target {ivs} (width {step.width:.2%})")


@with_cli_errors
def design_command(
    pool_file: Path = typer.Argument(..., help="CSV or parquet table of trained runs: the candidate pool."),
    params: str = typer.Option(..., "--params", help="Column holding model size N."),
    tokens: str = typer.Option(..., "--tokens", help="Column holding training tokens D."),
    loss: str = typer.Option(..., "--loss", help="Column holding the final loss (read only for chosen rows)."),
    unique_tokens: Optional[str] = typer.Option(None, "--unique-tokens", help="Column of unique tokens U: the data-constrained law."),
    compute: Optional[str] = typer.Option(None, "--compute", help="Column holding each run's cost in FLOPs (default 6ND)."),
    fraction: float = typer.Option(..., "--fraction", help="Share of the whole pool's compute to spend, in (0, 1]."),
    target: Optional[Path] = typer.Option(None, "--target", help="CSV of planned runs (the pool's --params, --tokens[, --unique-tokens] columns; a --loss column is the truth)."),
    target_compute: Optional[float] = typer.Option(None, "--target-compute", help="Target N_opt at this compute (FLOPs) instead of planned runs."),
    out_file: Path = typer.Option(..., "--out", help="CSV of the chosen rows with order, step and score."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    batch: int = typer.Option(4, "--batch", min=1, help="Runs chosen per refit."),
    n_boot: int = typer.Option(100, "--n-boot", min=10, help="Bootstrap resamples per refit."),
    stop_width: Optional[float] = typer.Option(None, "--stop-width", help="Stop once the target's 95% interval is this narrow, relative to its prediction (e.g. 0.02)."),
    cost_exponent: Optional[float] = typer.Option(None, "--cost-exponent", min=0.0, help="gamma: score = expected error reduction / cost^gamma (default: analysis/design.py COST_EXPONENT)."),
    scale_discount: Optional[float] = typer.Option(None, "--scale-discount", min=0.0, help="tau: a candidate's noise gains (tau x decades of compute below the target)^2; the variance scorings (bootstrap, delta) only (default: analysis/design.py SCALE_DISCOUNT)."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="What a candidate's gain is computed from: bootstrap (the fit's draws), delta (the delta method at the fit's point; the choice then does not depend on --n-boot) or bias (delta plus a smooth discrepancy of the law: the expected squared error, not only the variance; analysis/design_bias.py). Default: analysis/design.py SCORING."),
    at_bound: Optional[str] = typer.Option(None, "--at-bound", help="What chooses a batch while the fitted law has E, alpha or beta at its bound (the runs so far leave it undetermined): spread (the cheapest runs at new compute levels), bootstrap (the bootstrap scoring) or none (the scoring as usual). Default: analysis/design.py AT_BOUND with the bias scoring, none with the others."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Replay an adaptive sweep over an existing table: choose runs by the expected shrinkage of the target's
    error per FLOP, revealing each loss only once chosen (docs/SCIENCE.md, "Adaptive designs")."""
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction {fraction}: give a share of the pool's compute in (0, 1], e.g. 0.25")
    if scoring is not None and scoring not in ds.SCORINGS:
        raise UserError(f"--scoring {scoring}: give one of {', '.join(ds.SCORINGS)}")
    if at_bound is not None and at_bound not in ds.AT_BOUNDS:
        raise UserError(f"--at-bound {at_bound}: give one of {', '.join(ds.AT_BOUNDS)}")
    pool, losses = _pool(pool_file, params, tokens, loss, unique_tokens, compute)
    tgt, truth = _target(target, target_compute, params, tokens, loss, unique_tokens)
    total = float(pool["cost"].sum())
    say = (lambda s: None) if as_json else (lambda s: _say(_step_line(s, pool, total)))
    with warnings.catch_warnings():  # a bootstrap draw with an infinite N_opt is counted, not printed
        warnings.simplefilter("ignore", RuntimeWarning)
        rep = ds.replay(pool, lambda r: losses[r], tgt, fraction * total, batch=batch, n_boot=n_boot, seed=seed,
                        stop_width=stop_width, on_step=say, cost_exponent=cost_exponent,
                        scale_discount=scale_discount, scoring=scoring, at_bound=at_bound)
        full = ds.fit_revealed(pool, dict(enumerate(losses)), n_boot=n_boot, seed=seed)  # the comparison: all rows
        result = _summary(rep, full, tgt, truth, total, seed, scoring or ds.SCORING)
    _write_chosen(pool_file, out_file, rep)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for line in _final_lines(result):
        _say(line)


def _summary(rep, full, tgt, truth, total: float, seed: int, scoring: str) -> dict:
    last = rep.steps[-1]
    pf, lf, hf = predict_target(full, tgt, seed=seed)
    out = {"target": tgt.kind, "scoring": scoring, "stopped": rep.stopped, "spent": last.spent, "fraction_spent": last.spent / total,
           "runs_chosen": int(len(rep.chosen)),
           "chosen": {"value": last.point.tolist(), "interval": [last.low.tolist(), last.high.tolist()]},
           "all_rows": {"value": pf.tolist(), "interval": [lf.tolist(), hf.tolist()]},
           "steps": [{"step": s.step, "rows": s.rows.tolist(), "spent": s.spent, "width": s.width} for s in rep.steps]}
    if truth is not None:
        out["true_loss"] = truth.tolist()
    return out


def _final_lines(r: dict) -> list[str]:
    lines = [f"stopped: {r['stopped']}; {r['runs_chosen']} runs chosen by the {r['scoring']} scoring, "
             f"{r['spent']:.3g} FLOPs ({r['fraction_spent']:.1%} of the pool)", f"target ({'N_opt' if r['target'] == 'n_opt' else 'loss'}):"]
    for i, v in enumerate(r["chosen"]["value"]):
        c, a = r["chosen"], r["all_rows"]
        line = (f"  {i + 1}: chosen rows {v:.4g} [{c['interval'][0][i]:.4g}, {c['interval'][1][i]:.4g}]; all rows "
                f"{a['value'][i]:.4g} [{a['interval'][0][i]:.4g}, {a['interval'][1][i]:.4g}]")
        if "true_loss" in r:
            line += f"; true {r['true_loss'][i]:.4g}"
        lines.append(line)
    return lines


def _write_chosen(pool_file: Path, out_file: Path, rep) -> None:
    rows = read_table(pool_file).iloc[rep.chosen["row"].to_numpy()].reset_index(drop=True)
    extra = rep.chosen.rename(columns={"row": "pool_row"})[["order", "step", "score", "cost", "pool_row"]]
    write_text(out_file, pd.concat([rows, extra], axis=1).to_csv(index=False))
