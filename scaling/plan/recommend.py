"""From a fitted scaling law to something to run: the compute-optimal N and D at a budget (with
intervals, from analysis/), a concrete model shape (models/config.py rules) and a ready-to-run spec.

Honest means the spec trains what the numbers describe: the chosen shape's own N (shapes come in steps), D
recomputed for that N at the budget, the learning-rate rule and multiplier that won in the runs behind the
law, their batch size and sequence length, and the band of sizes whose predicted loss is within 1% of the
best (a flat IsoFLOP profile makes several sizes about equally good).

The shape: the default rule (models/config.py, aspect d_model/n_layers near 64) gives small models one or two
wide layers. Where the sweep itself shows depth helping (its best shape at the largest budget is deeper than
the shallowest shape run there) and the rule's shape is shallower than that best shape, the shape is chosen
with the best swept shape's aspect instead; `shape_choice` says which, and why.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medscale.analysis import compute_optimal, fit_table
from medscale.analysis.conventions import FLOPS_PER_PARAM_TOKEN, full_flops_per_token
from medscale.analysis.data_constrained import loss_of
from medscale.analysis.errors import AnalysisError
from medscale.analysis.inputs import check_available_tokens
from medscale.analysis.report import repeats_data
from medscale.models.config import ASPECT_RANGE, MAX_LAYERS, ShapeError, counted_params, param_counts, shape_for
from medscale.scaling.plan.flops import flops_per_token as shape_flops

BAND = 0.01  # sizes whose predicted loss is within this fraction of the minimum are "about as good"
SHAPE_MISS = 2.0  # the shape's N may miss N_opt by this factor (shapes come in steps); more is refused


def _mode(values: pd.Series):
    counts = values.value_counts()
    return counts.index[0], len(counts)


def _fpt(done: pd.DataFrame, params_col: str, convention: str):
    if convention == "full" and "flops_full" in done and done["flops_full"].notna().all():
        return full_flops_per_token(done[params_col], done["tokens"], done["flops_full"])
    return lambda n: FLOPS_PER_PARAM_TOKEN * np.asarray(n, float)


def recommend(results: pd.DataFrame, compute: float, *, objective: str = "decoder", max_tokens: float | None = None,
              n_boot: int = 1000, seed: int = 0, compute_convention: str = "full",
              sweeps: dict[str, dict] | None = None, law=None, flops_per_token=None,
              tokens_option: str = "--max-tokens") -> dict:
    """Fit the objective's finished runs (the data-constrained law when they record unique tokens and some
    repeat them, else Approach 3 on the runs with all the data) and allocate `compute` FLOPs, with
    `max_tokens` unique tokens available when given.

    `compute_convention` 'full' spends the budget on the full FLOP count the runs recorded; '6nd' on 6ND.
    `sweeps` (sweep name -> the spec as a dict) supplies the learning-rate rule of the runs.
    `law` (a summary.FitResult already fitted to these runs, e.g. report.ObjectiveFits.law) and
    `flops_per_token` (the full FLOPs per token of N that analysis used) are reused instead of fitting again,
    so the recommendation is the same number as the report's. `tokens_option` is the command's name for
    `max_tokens` in the message refusing fewer unique tokens than one training window.
    """
    done = results[(results["status"] == "done") & (results["objective"] == objective)].copy()
    if done.empty:
        raise AnalysisError(f"no finished {objective} runs to fit; run a sweep first")
    convention = str(done["param_count"].mode().iloc[0]) if "param_count" in done and done["param_count"].notna().any() \
        else "non_embedding"
    has_u = repeats_data(done)  # the same rule as the report's (analysis/report.py)
    seq_len, n_seq = _mode(done["seq_len"])
    if max_tokens is not None:
        max_tokens = check_available_tokens(max_tokens, tokens_option, minimum=float(seq_len),
                                            window=f"seq_len {seq_len} of the runs fitted")
    if not has_u and "train_fraction" in done:  # runs on part of the data repeat it: only L(N, D, U) fits them
        done = done[done["train_fraction"].fillna(1.0) >= 1.0]
    fit = law if law is not None else fit_table(
        done, params="params", loss="loss", tokens="tokens", approach=3, n_boot=n_boot, seed=seed,
        budget_col="budget" if done["budget"].notna().any() else None,
        unique_tokens="unique_tokens" if has_u else None)
    fpt = flops_per_token if flops_per_token is not None and compute_convention == "full" else \
        _fpt(done, "params", compute_convention)
    full = compute_convention == "full" and "flops_full" in done
    allocation = compute_optimal(fit.fit, compute, max_tokens=max_tokens, flops_per_token=fpt if full else None)
    notes: list[str] = []
    batch, n_batch = _mode(done["batch_size"])
    if n_seq > 1 or n_batch > 1:
        notes.append(f"the fitted runs used several batch sizes or sequence lengths; the most common "
                     f"(batch {batch}, seq_len {seq_len}) is kept")
    shape_kw = dict(vocab_size=int(done["vocab_size"].iloc[0]), max_len=int(seq_len), causal=objective == "decoder")
    shape, shape_choice = choose_shape(allocation.n_opt.value, convention, best_swept_shape(done), **shape_kw)
    notes.append(shape_choice["reason"])
    n_shape = float(counted_params(shape, convention))
    refuse_unreachable(shape, n_shape, allocation, compute, fit.fit)
    # the budget on the count the allocation used: the runs' full FLOPs per token of N, or 6N (scaling/plan/flops.py)
    tokens = float(compute / (fpt(n_shape) if full else shape_flops(shape, int(seq_len), convention).six_n))
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
            "compute_convention": "full" if full else "6nd", "notes": notes, "shape_choice": shape_choice}


def refuse_unreachable(shape, n_shape: float, allocation, compute: float, law) -> None:
    """A ShapeError when the shape rules cannot build a model within SHAPE_MISS of N_opt (past the largest shape,
    or below the smallest): its message names N_opt and D_opt, the nearest shape and about which budget it fits."""
    n_opt = allocation.n_opt.value
    if abs(np.log(n_shape / n_opt)) <= np.log(SHAPE_MISS):
        return
    side = "largest" if n_opt > n_shape else "smallest"
    capped = allocation.token_limited and allocation.epochs is None  # N = C / (6 D_cap): N grows as C
    a = 1.0 if capped else float(getattr(getattr(law, "allocation_", None), "a", float("nan")))
    edge = compute * (n_shape / n_opt) ** (1 / a) if a > 0 else float("nan")  # N_opt ~ C^a
    at = (f"is compute-optimal at about {edge:.3g} FLOPs: ask for a budget of "
          f"{'at most' if side == 'largest' else 'at least'} that") if np.isfinite(edge) else "bounds what can be run"
    raise ShapeError(
        f"N_opt = {n_opt:.3g} params (D_opt = {allocation.d_opt.value:.3g} tokens) at {compute:.3g} FLOPs"
        f"{_past(allocation)} is {'more' if side == 'largest' else 'less'} than the {side} model the shape rules "
        f"build (models/config.py: 1 to {MAX_LAYERS} layers, d_model/n_layers {ASPECT_RANGE[0]} to {ASPECT_RANGE[1]}): "
        f"d_model {shape.d_model} x {shape.n_layers} layers, {n_shape:.3g} params, so no shape or run spec is made "
        f"for it. The {side} shape {at}")


def _past(allocation) -> str:
    reach = allocation.beyond_data
    if not reach or reach["compute_decades"] < 0.05:
        return ""
    return f" ({reach['compute_decades']:.1f} decades of compute past the largest run fitted)"


def best_swept_shape(done: pd.DataFrame) -> dict | None:
    """The shape with the lowest loss among the finished runs at the sweep's largest budget (the largest
    IsoFLOP budget; in a ladder, the largest token count), mean over seeds and learning rates; None when
    fewer than two shapes ran there. `depth_helps`: that shape is deeper than the shallowest one run there."""
    need = {"d_model", "n_layers", "n_heads", "loss"}
    if not need <= set(done.columns) or done.empty:
        return None
    col = "budget" if "budget" in done and done["budget"].notna().any() else "tokens"
    top = done[np.isclose(done[col].astype(float), float(done[col].max()), rtol=1e-9)]
    mean = top.groupby(["d_model", "n_layers", "n_heads"])["loss"].mean()
    if len(mean) < 2:
        return None
    d_model, n_layers, n_heads = (int(v) for v in mean.idxmin())
    shallowest = int(top["n_layers"].min())
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "loss": float(mean.min()),
            "at": col, "value": float(top[col].iloc[0]), "shapes": int(len(mean)),
            "depth_helps": n_layers > shallowest, "shallowest_layers": shallowest}


def choose_shape(target: float, convention: str, best: dict | None, **shape_kw):
    """(shape, choice): the default rule's shape for N = `target`, unless the sweep's best shape at its largest
    budget is deeper than the shallowest there (depth helped) and deeper than the rule's: then the shape with
    the best swept shape's aspect d_model/n_layers. `choice` names the source ('rule' or 'sweep') and why."""
    rule = shape_for(target, convention, **shape_kw)
    if best is None:
        return rule, {"source": "rule", "best_swept": None,
                      "reason": "shape from the default rule (aspect ~64): fewer than two shapes at the largest "
                                "budget to check it against"}
    swept = f"d_model {best['d_model']} x {best['n_layers']} layers"
    where = f"{best['at']} {best['value']:.3g}"
    if not best["depth_helps"]:
        return rule, {"source": "rule", "best_swept": best,
                      "reason": f"shape from the default rule (aspect ~64): at the largest {where} the best swept "
                                f"shape ({swept}) is the shallowest there, so the sweep does not show depth helping"}
    if rule.n_layers >= best["n_layers"]:
        return rule, {"source": "rule", "best_swept": best,
                      "reason": f"shape from the default rule (aspect ~64): at least as deep as the best swept shape "
                                f"at the largest {where} ({swept})"}
    aspect = best["d_model"] / best["n_layers"]
    shape = shape_for(target, convention, aspect=aspect, **shape_kw)
    return shape, {"source": "sweep", "best_swept": best, "aspect": aspect,
                   "reason": f"shape with the aspect of the best swept shape at the largest {where} ({swept}, aspect "
                             f"{aspect:.3g}): the default rule gave {rule.n_layers} layer(s) of {rule.d_model}, "
                             f"shallower than a shape the sweep shows depth helping"}


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
