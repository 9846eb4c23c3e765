"""The recommended model's downstream forecast for `medscale optimal`: the two-step loss -> task metric law
(analysis/task_forecast.py) fitted to the store's downstream results, read at the loss the fitted law predicts
for the recommended model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medscale.analysis.errors import AnalysisError
from medscale.analysis.task_forecast import normal_draws, task_forecasts
from medscale.scaling.downstream.evaluate import compile_downstream, downstream_data
from medscale.scaling.sweep.results import load_results


def forecast_lines(runs_dir: Path | str, rec: dict, objective: str, n_boot: int = 200, seed: int = 0) -> list[str]:
    """Printable lines, or none when the store has no downstream results or the law predicts no loss."""
    loss = rec["allocation"].loss
    if loss is None or not (Path(runs_dir) / "downstream").is_dir():
        return []
    table = compile_downstream(runs_dir)
    if table.empty:
        return []
    data = downstream_data(runs_dir, table)
    results, _ = load_results(runs_dir)
    runs = results[(results["status"] == "done") & (results["objective"] == objective)]
    mine = data.results[data.results["objective"] == objective]
    try:
        got = task_forecasts(mine, runs[["run_id", "loss"]], draws=data.draws, at_loss=loss,
                             at_loss_draws=normal_draws(loss, max(n_boot, 1), seed), n_boot=n_boot, seed=seed)
    except AnalysisError as e:
        return [f"  downstream forecast: not available ({e})"]
    if got.empty or "forecast" not in got:
        return []
    lines = [f"forecast downstream AUROC at the predicted loss {loss.value:.3g} (two-step: loss law, then a "
             "bounded sigmoid of loss per task; 95% intervals):"]
    for r in got.dropna(subset=["forecast"]).itertuples():
        lines.append(f"  {r.task} ({r.mode}): {r.forecast:.3f} [{r.forecast_low:.3f}, {r.forecast_high:.3f}]"
                     + ("" if not np.isfinite(r.holdout_error) else
                        f"  (held-out largest model: forecast off by {r.holdout_error:+.3f})"))
    return lines
