"""The law families' figure: how each family predicted the costliest runs it never saw, and where the families
go beyond the runs. Takes a fitted `selection.FamilyChoice` (scikit-learn style: the fit in, a figure out),
writes PNG and SVG next to `out` on matplotlib's Agg canvas (never pyplot) and returns the paths.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .conventions import compute_6nd
from .plots import FORMATS, _figure, _save

FAMILY_COLORS = {"chinchilla": "#7570b3", "gadre": "#66a61e", "kaplan": "#1b9e77", "farseer": "#d95f02",
                 "data_constrained": "#e7298a"}


def plot_families(choice, out, *, budget: float | None = None, formats=FORMATS) -> list:
    """Left: the validation's largest cut: the runs it fitted (grey), the costlier runs it held out (black) and
    each family's prediction of them, the chosen family filled and named. Right: each family fitted to all runs,
    its predicted loss along the chosen family's compute-optimal N from the runs to `budget` (default 10x the
    largest run), with the mixture's 95% band (parameters and families) and the runs' best loss per compute."""
    fig, (left, right) = _figure(ncols=2)
    _held_out_panel(left, choice)
    _beyond_panel(right, choice, budget or 10 * choice.max_compute)
    return _save(fig, out, formats)


def _runs(choice):
    """(compute, loss) of the runs the families were fitted to (replicates merged)."""
    d = next(iter(choice.families.values())).data_
    return compute_6nd(d["params"], d["tokens"]).to_numpy(float), d["loss"].to_numpy(float)


def _label(choice, k) -> str:
    return f"{k} (chosen)" if k == choice.chosen else k


def _held_out_panel(ax, choice) -> None:
    C, L = _runs(choice)
    err = choice.errors
    if err is None or not len(err):
        ax.scatter(C, L, s=12, color="gray", label="runs")
        ax.set_title("no validation on held-out costlier runs (too few runs)")
    else:
        orders = getattr(choice, "orders", None) or {}
        order = max(orders, key=orders.get) if orders else None  # the order that counts most
        if "order" in err.columns and order in set(err["order"]):
            err = err[err["order"] == order]
        order = err["order"].iloc[0] if "order" in err.columns else "compute"
        cut = err["cut"].max()
        e = err[err["cut"] == cut]
        first = e[e["family"] == e["family"].iloc[0]]
        held = set(zip(first["params"], first["tokens"]))
        d = next(iter(choice.families.values())).data_
        below = np.array([(n, t) not in held for n, t in zip(d["params"], d["tokens"])])
        ax.scatter(C[below], L[below], s=12, color="lightgray", label="fitted at this cut")
        ax.scatter(first["compute"], first["loss"], s=42, facecolors="none", edgecolors="black", zorder=4,
                   label="held out (observed)")
        for k, g in e.groupby("family", sort=False):
            chosen = k == choice.chosen
            ax.scatter(g["compute"], g["predicted"], s=40 if chosen else 18, marker="*" if chosen else "x",
                       color=FAMILY_COLORS.get(k, "gray"), zorder=5 if chosen else 3,
                       label=f"{_label(choice, k)}: {100 * np.mean(np.abs(g['rel_error'])):.2f}% error")
        by = {"compute": "compute", "params": "N (largest models)", "tokens": "D (longest runs)"}.get(order, order)
        ax.set_title(f"validation: top {cut:.0%} of runs by {by} held out")
    ax.set_xscale("log")
    ax.set_xlabel("compute C = 6ND (FLOPs)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)


def _path(choice, budget: float):
    """Compute grid from the smallest run to `budget`, and the chosen family's compute-optimal N and D on it."""
    C, _ = _runs(choice)
    grid = np.geomspace(C.min(), max(budget, C.max()), 40)
    fam = choice.families[choice.chosen]
    N = np.array([fam._n_opt_point(c, None) for c in grid])
    ok = np.isfinite(N) & (N > 0)
    return grid[ok], N[ok], grid[ok] / (6 * N[ok])


def _beyond_panel(ax, choice, budget: float) -> None:
    C, L = _runs(choice)
    grid, N, D = _path(choice, budget)
    pred = choice.predict(N, D, noise=False)
    ax.fill_between(grid, pred["low"], pred["high"], color="lightsteelblue", alpha=0.6,
                    label="mixture, 95% (parameters and families)")
    for k in choice.families:
        chosen = k == choice.chosen
        ax.plot(grid, pred[f"loss_{k}"], color=FAMILY_COLORS.get(k, "gray"), lw=2.4 if chosen else 1.2,
                ls="-" if chosen else "--", label=f"{_label(choice, k)} (weight {choice.weights.get(k, 0):.2f})")
    best = pd.Series(L, index=C).groupby(level=0).min().cummin()  # the best loss reached at or below each compute
    ax.scatter(best.index, best.to_numpy(), s=12, color="black", label="runs: best loss at or below that compute")
    ax.axvline(C.max(), color="gray", ls=":", lw=1)
    ax.axvline(budget, color="black", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("compute C = 6ND (FLOPs); dotted: largest run, budget")
    ax.set_ylabel("predicted loss at the chosen family's N_opt")
    ax.set_title("beyond the runs")
    ax.legend(fontsize=7)
