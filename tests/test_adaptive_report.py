"""The report shows an adaptive sweep's path (issue 32, item 4): the target's interval width against compute spent,
the chosen runs on the IsoFLOP and parametric figures against the candidates never chosen, and what the full grid
would have cost. Fast: synthetic decision records, no training (the slow end-to-end sweep in
tests/test_adaptive_sweep.py checks the section on a store a real adaptive sweep wrote)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medscale.analysis import plots, synthetic
from medscale.analysis.adaptive_path import (AdaptiveSweep, PATH_COLUMNS, candidates_of, path_frame, pool_marks,
                                             width_path_figure)
from medscale.analysis.report import write_report

POOL_FLOPS = 1e14


def _candidates(n: int = 12) -> list[dict]:
    N = np.geomspace(1e6, 1e8, n)
    return [{"run_id": f"decoder-{i:04d}", "params": float(N[i]), "tokens": float(2e7), "cost": 6 * N[i] * 2e7,
             "score": None} for i in range(n)]


def _fit(runs: int, width: float) -> dict:
    point = 3e7
    return {"law": "ParametricFit", "runs": runs, "parameters": {},
            "target": {"kind": "n_opt", "compute": 1e20, "point": [point], "low": [point * (1 - width / 3)],
                       "high": [point * (1 + 2 * width / 3)], "width": width}}


def decisions(widths=(0.9, 0.5, 0.3, 0.2)) -> list[dict]:
    """An initial design of 6 runs, one batch of 2 per width but the last, and a stop: as adaptive.py records them."""
    cands = _candidates()
    out, spent = [], 0.0
    chosen = [cands[i] for i in range(6)]
    for b in range(len(widths) + 1):
        kind = "initial" if b == 0 else "stop" if b == len(widths) else "select"
        if kind == "select":
            chosen = cands[6 + 2 * (b - 1): 8 + 2 * (b - 1)]
        elif kind == "stop":
            chosen = []
        cost = float(sum(c["cost"] for c in chosen))
        out.append({"batch": b, "kind": kind, "candidates": cands if b == 0 else [], "chosen": chosen,
                    "fit": None if b == 0 else _fit(6 + 2 * (b - 1), widths[b - 1]), "spent_before": spent,
                    "spent_after": spent + cost, "cost": cost, "budget": 5e13, "stopped": "done" if kind == "stop"
                    else None})
        spent += cost
    return out


def test_path_frame_has_one_row_per_decision_with_the_fit_it_used():
    recs = decisions()
    path = path_frame(recs, POOL_FLOPS)
    assert list(path.columns) == PATH_COLUMNS and len(path) == len(recs)
    assert list(path["kind"]) == ["initial", "select", "select", "select", "stop"]
    assert list(path["runs"]) == [6, 2, 2, 2, 0]
    assert np.isnan(path["width"].iat[0]) and list(path["width"].iloc[1:]) == [0.9, 0.5, 0.3, 0.2]
    assert (path["spent_after"].diff().iloc[1:] >= 0).all() and (path["pool_flops"] == POOL_FLOPS).all()
    assert (path["low"].iloc[1:] < path["point"].iloc[1:]).all() and (path["point"] < path["high"]).iloc[1:].all()
    assert list(path["spent_before"].iloc[1:]) == list(path["spent_after"].iloc[:-1])


def test_width_figure_draws_the_widths_against_compute_and_the_full_grid():
    path = path_frame(decisions(), POOL_FLOPS)
    fig = width_path_figure(path, target="N_opt")
    axw, axt = fig.axes[:2]
    widths = axw.lines[0]
    fitted = path.iloc[1:]  # the initial design had no fit
    assert list(widths.get_xdata()) == list(fitted["spent_before"]) and list(widths.get_ydata()) == [0.9, 0.5, 0.3, 0.2]
    assert np.all(np.diff(widths.get_ydata()) < 0)
    grid_lines = [ln for ax in (axw, axt) for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(grid_lines) == 2 and all(ln.get_xdata()[0] == POOL_FLOPS for ln in grid_lines)
    assert axw.get_xscale() == "log" and "full grid: 1e+14 FLOPs" in [t.get_text() for t in axw.get_legend().texts]
    assert [t.get_text() for t in axw.texts] == ["1", "2", "3", "4"]  # each point numbered by its decision


def test_pool_marks_number_the_chosen_runs_by_decision_and_leave_the_rest_unchosen():
    recs = decisions()
    pool = pool_marks(candidates_of(recs), recs)
    assert len(pool) == 12 and pool["batch"].notna().sum() == 12
    assert list(pool["batch"].iloc[:8]) == [0] * 6 + [1] * 2 and list(pool["order"].iloc[:3]) == [1, 2, 3]
    fewer = recs[:2]  # the sweep stopped after its first batch: 4 candidates never chosen
    pool = pool_marks(candidates_of(fewer), fewer)
    assert pool["batch"].isna().sum() == 4 and pool["order"].isna().sum() == 4


def test_mark_pool_draws_chosen_runs_filled_and_numbered_the_rest_hollow():
    fig, (ax,) = plots._figure()
    plots.mark_pool(ax, [1, 2, 3, 4], [5, 6, 7, 8], [0, np.nan, 2, np.nan])
    hollow, filled = ax.collections
    assert hollow.get_offsets().tolist() == [[2, 6], [4, 8]] and len(hollow.get_facecolors()) == 0
    assert filled.get_offsets().tolist() == [[1, 5], [3, 7]] and len(filled.get_facecolors()) == 2
    assert [t.get_text() for t in ax.texts] == ["0", "2"]


def test_unchosen_candidates_sit_on_their_budgets_isoflop_profile():
    from medscale.analysis.isoflop import IsoFlopFit

    iso = synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=7, noise=0.005)
    fit = IsoFlopFit(n_boot=0).fit(iso.params, iso.compute, iso.loss, budget=iso.budget)
    n = np.array([3e8, 5e8, 4e8])
    pool = pd.DataFrame({"params": n, "tokens": [1e19 / (6 * 3e8), 1e19 / (6 * 5e8), 1e22 / (6 * 4e8)],
                         "loss": [2.5, np.nan, np.nan], "batch": [1, np.nan, np.nan]})
    x, y = plots._pool_on_profiles(fit, pool)
    assert y[0] == 2.5  # chosen: its own loss
    assert y[1] == pytest.approx(float(np.asarray(fit.predict(np.array([5e8]), 1e19))[0]))
    assert np.isnan(y[2])  # a budget with no fitted profile: not placed


def _sweep(recs) -> AdaptiveSweep:
    return AdaptiveSweep(name="tiny-adaptive", objective="decoder", target="N_opt at C = 1e+20 FLOPs (6ND)",
                         path=path_frame(recs, POOL_FLOPS), pool=pool_marks(candidates_of(recs), recs),
                         pool_flops=POOL_FLOPS, budget=5e13, stopped=recs[-1]["stopped"])


def test_report_has_a_section_per_adaptive_sweep(tmp_path, fast_figures):
    recs = decisions()
    sweep = _sweep(recs)
    iso = synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=7, noise=0.005)
    index = write_report(tmp_path / "rep", results=iso, budget=1e21, n_boot=0, adaptive=[sweep])
    text = index.read_text()
    assert "<h2>Adaptive sweep tiny-adaptive <small>(decoder)</small></h2>" in text
    spent = recs[-1]["spent_after"]
    sentence = (f"the full grid of 12 candidate runs would have cost 1e+14 FLOPs; the sweep chose 12 of them and "
                f"spent {spent:.3g} FLOPs ({spent / POOL_FLOPS:.0%} of the full grid)")
    assert sentence in text
    section = text[text.index("<h2>Adaptive sweep"):]
    assert section.count("<tr><td>") == len(recs) and "no fit yet" in section and "<td>0.200</td>" in section
    assert (index.parent / "tiny_adaptive_adaptive_path.png").stat().st_size > 0
    fits = json.loads((index.parent / "fits.json").read_text())["adaptive"]["tiny-adaptive"]
    assert fits["pool_flops"] == POOL_FLOPS and fits["spent"] == spent and len(fits["decisions"]) == len(recs)
    assert fits["decisions"][0]["width"] is None and fits["decisions"][-1]["width"] == 0.2


def test_analyze_store_reads_recorded_decisions_without_the_spec(tmp_path):
    """A store whose spec cannot be expanded (here: none) still gets its path, priced from the records."""
    from medscale.scaling.pipeline import adaptive_sweeps
    from medscale.scaling.sweep.adaptive import History

    history = History(tmp_path, "tiny-adaptive")
    history.claim({"sweep": "tiny-adaptive", "pool": "x", "target": {"n_opt_at": 1e20, "planned": None}})
    for d in decisions():
        history.record(d)
    (sweep,) = adaptive_sweeps(tmp_path)
    assert sweep.name == "tiny-adaptive" and sweep.target == "N_opt at C = 1e+20 FLOPs (6ND)"
    assert sweep.pool_flops == pytest.approx(sum(c["cost"] for c in _candidates()))
    assert len(sweep.path) == 5 and sweep.stopped == "done" and sweep.pool["batch"].notna().sum() == 12
    assert adaptive_sweeps(tmp_path / "empty") == []
