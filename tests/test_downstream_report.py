"""The report's downstream sections from synthetic results with known structure: verdicts, paired
differences, the two-step forecast for the recommended model, zero-shot K sweep and subgroups."""
import json

import numpy as np
import pandas as pd

from medscale.analysis import synthetic
from medscale.analysis.downstream_data import DownstreamData
from medscale.analysis.report import write_report


def _downstream(results: pd.DataFrame, rng):
    runs = results[results["budget"] == results["budget"].max()].sort_values("params")
    loss = runs["loss"].to_numpy()
    rows, draws, subs = [], [], []
    shared = rng.normal(0, 0.01, 100)
    for task, top in (("rising", 0.95), ("flat", 0.75)):
        for r, L in zip(runs.itertuples(), loss):
            v = 0.5 + (top - 0.5) / (1 + np.exp(8 * (L - loss.mean()))) if task == "rising" else 0.74
            rows.append({"run_id": r.run_id, "objective": "decoder", "params": r.params, "compute": r.compute,
                         "task": task, "mode": "probe", "metric": "auroc", "value": v, "low": v - 0.02,
                         "high": v + 0.02, "ceiling": top, "gap": top - v, "protocol": "subjects"})
            draws += [{"run_id": r.run_id, "task": task, "mode": "probe", "metric": "auroc", "seed": 0, "draw": b,
                       "value": v + shared[b] + rng.normal(0, 0.002), "resample": task} for b in range(100)]
            for g, off in (("F", 0.0), ("M", -0.03)):
                subs.append({"run_id": r.run_id, "objective": "decoder", "params": r.params, "compute": r.compute,
                             "task": task, "mode": "probe", "label_budget": "all", "seed": 0, "kind": "sex",
                             "group": g, "n": 300, "metric": "auroc", "value": v + off, "low": v + off - 0.02,
                             "high": v + off + 0.02, "ceiling": top, "protocol": "subjects"})
            for metric, val in (("auroc", 0.6), ("auroc_k1", 0.55), ("auroc_k4", 0.58), ("auroc_k16", 0.6),
                                ("censored", 0.05), ("rollout_tokens", 40), ("rollout_cap", 256),
                                ("rollout_capped", 0)):
                rows.append({"run_id": r.run_id, "objective": "decoder", "params": r.params, "compute": r.compute,
                             "task": task, "mode": "zero_shot", "metric": metric, "value": val, "low": np.nan,
                             "high": np.nan, "ceiling": np.nan, "gap": np.nan, "protocol": "subjects"})
        for mode, v in (("lightgbm", 0.7), ("ceiling", top)):
            rows.append({"run_id": "baseline", "objective": None, "params": np.nan, "compute": np.nan, "task": task,
                         "mode": mode, "metric": "auroc", "value": v, "low": v - 0.02, "high": v + 0.02,
                         "ceiling": top, "gap": top - v, "protocol": "subjects"})
    return DownstreamData(pd.DataFrame(rows), pd.DataFrame(draws), pd.DataFrame(subs))


def test_downstream_sections_report_verdicts_forecasts_zero_shot_and_subgroups(tmp_path, fast_figures):
    rng = np.random.default_rng(0)
    results = synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=6, noise=0.005)
    index = write_report(tmp_path / "rep", results=results, downstream=_downstream(results, rng), budget=1e21,
                         n_boot=20)
    text = index.read_text()
    for heading in ("Does a bigger model pay?", "Paired differences between consecutive sizes",
                    "Two-step forecast", "Zero-shot: AUROC against the number of rollouts K",
                    "Subgroups: does scale close the gap?"):
        assert heading in text, heading
    fits = json.loads((index.parent / "fits.json").read_text())
    block = fits["downstream"]["decoder"] if "decoder" in fits["downstream"] else fits["downstream"]["all"]
    verdict = {r["task"]: r["status"] for r in block["ranking"]}
    assert verdict["flat"] == "flat"
    forecast = {r["task"]: r for r in block["forecast"]}
    assert forecast["rising"]["forecast"] is not None and forecast["rising"]["forecast"] <= 0.95 + 1e-9
    assert forecast["rising"]["holdout_two_step"]          # the loss law was refitted without the largest run
    assert {r["task"] for r in block["zero_shot"]} == {"rising", "flat"}
    assert {r["kind"] for r in block["subgroups"]} == {"sex"}
    assert all(r["ranking"] is not None for r in [block])
