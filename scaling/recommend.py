"""From a fitted scaling law to something to run: the compute-optimal N and D at a budget (with
intervals, from analysis/), a concrete model shape (models/config.py rules) and a ready-to-run spec."""
from __future__ import annotations

import pandas as pd

from medscale.models.config import param_counts, shape_for


def recommend(results: pd.DataFrame, compute: float, *, objective: str = "decoder", max_tokens: float | None = None,
              n_boot: int = 200, seed: int = 0) -> dict:
    """Fit L(N, D) (Approach 3) to the objective's finished runs and allocate `compute` FLOPs (6ND)."""
    from medscale.analysis import compute_optimal, fit_table
    from medscale.analysis.errors import AnalysisError

    done = results[(results["status"] == "done") & (results["objective"] == objective)]
    if done.empty:
        raise AnalysisError(f"no finished {objective} runs to fit; run a sweep first")
    fit = fit_table(done, params="params", loss="loss", tokens="tokens", approach=3, n_boot=n_boot, seed=seed,
                    budget_col="budget" if done["budget"].notna().any() else None)
    allocation = compute_optimal(fit.fit, compute, max_tokens=max_tokens)
    row = done.iloc[0]
    convention = str(row.get("param_count") or "non_embedding")
    shape = shape_for(allocation.n_opt.value, convention, vocab_size=int(row["vocab_size"]), max_len=int(row["seq_len"]),
                      causal=objective == "decoder")
    return {"fit": fit, "allocation": allocation, "shape": shape, "params": param_counts(shape),
            "param_count": convention, "seq_len": int(row["seq_len"]), "batch_size": int(row["batch_size"])}


def run_spec(rec: dict, *, name: str, dataset: dict, objective: str = "decoder") -> dict:
    """A one-run spec (ladder of one point) training the recommended shape on D_opt tokens."""
    shape = rec["shape"]
    return {
        "name": name,
        "objective": objective,
        "dataset": dataset,
        "model": {"seq_len": rec["seq_len"], "param_count": rec["param_count"]},
        "grid": {"mode": "ladder",
                 "params": [{"d_model": shape.d_model, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
                             "d_ff": shape.d_ff}],
                 "tokens": [f"{rec['allocation'].d_opt.value:.4g}"]},
        "optimizer": {"batch_size": rec["batch_size"]},
    }
