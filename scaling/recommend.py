"""From a fitted scaling law to something to run: the compute-optimal N and D at a budget (with
intervals, from analysis/), a concrete model shape (models/config.py rules) and a ready-to-run spec.

Honest means the spec trains what the numbers describe: the chosen shape's own N (shapes come in steps), D
recomputed for that N at the budget, the learning-rate rule and multiplier that won in the runs behind the
law, their batch size and sequence length, and the band of sizes whose predicted loss is within 1% of the
best (a flat IsoFLOP profile makes several sizes about equally good).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medscale.models.config import counted_params, param_counts, shape_for

BAND = 0.01  # sizes whose predicted loss is within this fraction of the minimum are "about as good"


def _mode(values: pd.Series):
    counts = values.value_counts()
    return counts.index[0], len(counts)


def _fpt(done: pd.DataFrame, params_col: str, convention: str):
    from medscale.analysis.conventions import FLOPS_PER_PARAM_TOKEN, full_flops_per_token

    if convention == "full" and "flops_full" in done and done["flops_full"].notna().all():
        return full_flops_per_token(done[params_col], done["tokens"], done["flops_full"])
    return lambda n: FLOPS_PER_PARAM_TOKEN * np.asarray(n, float)


def recommend(results: pd.DataFrame, compute: float, *, objective: str = "decoder", max_tokens: float | None = None,
              n_boot: int = 1000, seed: int = 0, compute_convention: str = "full",
              sweeps: dict[str, dict] | None = None) -> dict:
    """Fit the objective's finished runs (the data-constrained law when they record unique tokens, else
    Approach 3) and allocate `compute` FLOPs, with `max_tokens` unique tokens available when given.

    `compute_convention` 'full' spends the budget on the full FLOP count the runs recorded; '6nd' on 6ND.
    `sweeps` (sweep name -> the spec as a dict) supplies the learning-rate rule of the runs.
    """
    from medscale.analysis import compute_optimal, fit_table
    from medscale.analysis.data_constrained import loss_of
    from medscale.analysis.errors import AnalysisError

    done = results[(results["status"] == "done") & (results["objective"] == objective)].copy()
    if done.empty:
        raise AnalysisError(f"no finished {objective} runs to fit; run a sweep first")
    convention = str(done["param_count"].mode().iloc[0]) if "param_count" in done and done["param_count"].notna().any() \
        else "non_embedding"
    has_u = "unique_tokens" in done and done["unique_tokens"].notna().all()
    if not has_u and "train_fraction" in done:  # runs on part of the data repeat it: only L(N, D, U) fits them
        done = done[done["train_fraction"].fillna(1.0) >= 1.0]
    fit = fit_table(done, params="params", loss="loss", tokens="tokens", approach=3, n_boot=n_boot, seed=seed,
                    budget_col="budget" if done["budget"].notna().any() else None,
                    unique_tokens="unique_tokens" if has_u else None)
    fpt = _fpt(done, "params", compute_convention)
    full = compute_convention == "full" and "flops_full" in done
    allocation = compute_optimal(fit.fit, compute, max_tokens=max_tokens, flops_per_token=fpt if full else None)
    notes: list[str] = []
    seq_len, n_seq = _mode(done["seq_len"])
    batch, n_batch = _mode(done["batch_size"])
    if n_seq > 1 or n_batch > 1:
        notes.append(f"the fitted runs used several batch sizes or sequence lengths; the most common "
                     f"(batch {batch}, seq_len {seq_len}) is kept")
    shape = shape_for(allocation.n_opt.value, convention, vocab_size=int(done["vocab_size"].iloc[0]),
                      max_len=int(seq_len), causal=objective == "decoder")
    n_shape = float(counted_params(shape, convention))
    tokens = float(compute / fpt(n_shape)) if full else float(compute / (6 * n_shape))
    if max_tokens is not None and allocation.epochs is None:
        tokens = min(tokens, float(max_tokens))
    p = fit.fit.params_
    U = np.inf if max_tokens is None else float(max_tokens)
    grid = np.geomspace(allocation.n_opt.value / 30, allocation.n_opt.value * 30, 2001)
    line = loss_of(p, grid, compute / fpt(grid), U) if full else loss_of(p, grid, compute / (6 * grid), U)
    if max_tokens is not None and allocation.epochs is None:  # a plain fit under a cap: D may not exceed it
        line = np.where(compute / (6 * grid) <= max_tokens * (1 + 1e-9), line, np.inf)
    within = grid[line <= line.min() * (1 + BAND)]
    band = (float(within.min()), float(within.max()))
    if band[1] / band[0] > 2:
        notes.append(f"the predicted loss is flat near the optimum: every N from {band[0]:.3g} to {band[1]:.3g} is "
                     f"within {BAND:.0%} of the best; choose by inference cost or downstream needs")
    lr = _lr_rule(done, fit, sweeps or {})
    return {"fit": fit, "allocation": allocation, "shape": shape, "params": param_counts(shape),
            "param_count": convention, "n": n_shape, "tokens": tokens,
            "loss": float(line[np.argmin(np.abs(grid - n_shape))]) if band else None,
            "band": band, "seq_len": int(seq_len), "batch_size": int(batch), "optimizer": lr,
            "compute_convention": "full" if full else "6nd", "notes": notes}


def _lr_rule(done: pd.DataFrame, fit, sweeps: dict[str, dict]) -> dict:
    """The learning-rate rule of the runs (from their sweep spec) with the multiplier that won most often."""
    sweep = str(done["sweep"].mode().iloc[0]) if "sweep" in done and done["sweep"].notna().any() else None
    opt = dict((sweeps.get(sweep) or {}).get("optimizer") or {})
    if ("lr_multiplier" not in done or done["lr_multiplier"].isna().any()) and opt.get("lr") and "lr" in done:
        # runs from before lr_multiplier was recorded: lr = lr * (base_width / d_model) * multiplier
        scale = opt.get("base_width", 128) / done["d_model"] if opt.get("lr_scaling", "inverse_width") == \
            "inverse_width" else 1.0
        done = done.assign(lr_multiplier=(done["lr"] / (opt["lr"] * scale)).round(6))
    if "lr_multiplier" in done and done["lr_multiplier"].nunique() > 1:
        key = ["params", "tokens"] + (["unique_tokens"] if "unique_tokens" in done else [])
        mean = done.groupby(key + ["lr_multiplier"], dropna=False)["loss"].mean().reset_index()
        best = mean.loc[mean.groupby(key, dropna=False)["loss"].idxmin(), "lr_multiplier"]
        opt["lr_multipliers"] = [float(best.mode().iloc[0])]
    elif "lr_multiplier" in done and done["lr_multiplier"].notna().any():
        opt["lr_multipliers"] = [float(done["lr_multiplier"].dropna().iloc[0])]
    return opt


def run_spec(rec: dict, *, name: str, dataset: dict, objective: str = "decoder") -> dict:
    """A one-run spec (a ladder of one point) training the recommended shape on the tokens recomputed for its
    own N at the budget, with the law's runs' optimizer settings, batch size and sequence length."""
    shape = rec["shape"]
    optimizer = {k: v for k, v in dict(rec.get("optimizer") or {}).items() if v is not None}
    optimizer["batch_size"] = rec["batch_size"]
    return {
        "name": name,
        "objective": objective,
        "dataset": dataset,
        "model": {"seq_len": rec["seq_len"], "param_count": rec["param_count"]},
        "grid": {"mode": "ladder",
                 "params": [{"d_model": shape.d_model, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
                             "d_ff": shape.d_ff}],
                 "tokens": [f"{rec['tokens']:.6g}"]},
        "optimizer": optimizer,
    }
