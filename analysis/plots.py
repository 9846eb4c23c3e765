"""Figures of fitted scaling laws. Each function takes a fit, writes PNG and SVG next to `out` and returns
the paths. Figures are built on matplotlib's Agg canvas directly, never through pyplot, so nothing touches
global backend state (safe in notebooks, threads and headless servers).
"""
from __future__ import annotations

from .conventions import compute_6nd, tokens_for_compute
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .bootstrap import interval

FORMATS = ("png", "svg")
COLORS = {1: "#1b9e77", 2: "#d95f02", 3: "#7570b3"}
NAMES = {1: "Approach 1 (envelope)", 2: "Approach 2 (IsoFLOP)", 3: "Approach 3 (parametric)"}


def _figure(ncols: int = 1, width: float = 5.5, height: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, out: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out.with_suffix(f".{fmt}")
        fig.savefig(p, dpi=130, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(p)
        fig.set_layout_engine("none")  # the first save laid the figure out; the next formats keep that layout
    return paths


def _compute_range(fits) -> np.ndarray:
    lo, hi = [], []
    for f in fits:
        d = getattr(f, "data_", None)
        if d is not None and "compute" in d:
            c = d["compute"]
        elif d is not None:
            c = compute_6nd(d["params"], d["tokens"])
        else:
            c = f.points_["compute"]
        lo.append(c.min())
        hi.append(c.max())
    return np.geomspace(min(lo) / 3, max(hi) * 30, 100)


def mark_pool(ax, x, y, batch) -> None:
    """An adaptive sweep's candidates on a figure: the chosen ones filled, coloured and numbered by the decision
    that chose them, the others hollow (adaptive_path.pool_marks gives `batch`, NaN where never chosen)."""
    x, y, batch = (np.asarray(v, dtype=float) for v in (x, y, batch))
    ok = np.isfinite(x) & np.isfinite(y)
    free, chosen = ok & ~np.isfinite(batch), ok & np.isfinite(batch)
    if free.any():
        ax.scatter(x[free], y[free], s=42, facecolors="none", edgecolors="gray", lw=0.9, zorder=5,
                   label="candidate, not chosen")
    if chosen.any():
        cmap, top = matplotlib.colormaps["autumn"], max(1.0, np.nanmax(batch))
        ax.scatter(x[chosen], y[chosen], s=42, c=[cmap(0.85 * b / top) for b in batch[chosen]], edgecolors="black",
                   lw=0.6, zorder=6, label="chosen (number: decision)")
        for xi, yi, b in zip(x[chosen], y[chosen], batch[chosen]):
            ax.annotate(str(int(b)), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=6.5, zorder=7)


def _pool_on_profiles(fit, pool) -> tuple[np.ndarray, np.ndarray]:
    """(N, loss) of an adaptive pool on the IsoFLOP figure: a chosen run at its loss, a candidate never chosen at
    its budget's fitted profile (NaN where its budget has none)."""
    budgets = np.array(sorted(fit.parabolas_), dtype=float)
    n = pool["params"].to_numpy(float)
    y = pool["loss"].to_numpy(float).copy() if "loss" in pool else np.full(len(pool), np.nan)
    c = compute_6nd(n, pool["tokens"].to_numpy(float))
    for i in np.flatnonzero(~np.isfinite(y)):
        if budgets.size:
            k = int(np.argmin(np.abs(np.log(budgets / c[i]))))
            if abs(np.log(budgets[k] / c[i])) < np.log(1.25):  # the same IsoFLOP budget
                y[i] = float(np.asarray(fit.predict(np.array([n[i]]), budgets[k]))[0])
    return n, y


def plot_isoflop(fit, out, *, pool=None, formats=FORMATS) -> list[Path]:
    """Loss against N per budget, the fitted parabolas and their minima (Approach 2). `pool`: an adaptive
    sweep's candidates (adaptive_path.pool_marks, with `loss` for the chosen), marked by `mark_pool`."""
    fig, (ax,) = _figure()
    d = fit.data_
    budgets = sorted(fit.parabolas_)
    norm = LogNorm(min(budgets), max(budgets) * 1.0001)
    cmap = matplotlib.colormaps["viridis"]
    for c in budgets:
        sel = d[np.isclose(d.budget, c)]
        color = cmap(norm(c) * 0.9)
        ax.scatter(sel.params, sel.loss, s=14, color=color, zorder=3)
        grid = np.geomspace(sel.params.min() / 1.3, sel.params.max() * 1.3, 80)
        ax.plot(grid, fit.predict(grid, c), color=color, lw=1.2, label=f"{c:.1e}")
    m = fit.minima_[fit.minima_.convex]
    ax.scatter(m.n_opt, m.loss_min, marker="*", s=90, color="crimson", zorder=4, label="minimum")
    # With few resamples a minimum can lie outside its own percentile interval: no negative error bar.
    xerr = np.clip(np.nan_to_num([m.n_opt - m.n_opt_low, m.n_opt_high - m.n_opt]), 0, None)
    ax.errorbar(m.n_opt, m.loss_min, xerr=xerr, fmt="none",
                ecolor="crimson", lw=0.8, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss")
    ax.set_title("IsoFLOP profiles (budget C in FLOPs)")
    if pool is not None:
        mark_pool(ax, *_pool_on_profiles(fit, pool), pool["batch"])
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, out, formats)


def plot_frontier(fit, out, *, formats=FORMATS) -> list[Path]:
    """Every run's loss against compute (curves or final points) with the lower envelope (Approach 1)."""
    fig, (ax,) = _figure()
    c = fit.curves_
    sizes = fit.run_params_
    norm = LogNorm(sizes.min(), sizes.max() * 1.0001)
    cmap = matplotlib.colormaps["plasma"]
    for rid, r in c.groupby("run_id"):
        color = cmap(norm(r.params.iloc[0]) * 0.9)
        if len(r) > 1:
            ax.plot(r.compute, r.loss, color=color, lw=0.8, alpha=0.8)
        else:
            ax.scatter(r.compute, r.loss, color=color, s=12)
    p = fit.points_.sort_values("compute")
    ax.plot(p.compute, p.loss, color="black", lw=2.2, label="envelope (used points)")
    ax.set_xscale("log")
    ax.set_xlabel("compute C = 6ND (FLOPs)")
    ax.set_ylabel("held-out loss")
    ax.set_title("Loss against compute")
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="parameters N")
    ax.legend(fontsize=8)
    return _save(fig, out, formats)


def plot_allocation(fits, out, *, formats=FORMATS) -> list[Path]:
    """N_opt(C) and D_opt(C) of one or several fits, with bootstrap bands and each approach's data points."""
    fits = [fits] if not isinstance(fits, (list, tuple)) else list(fits)
    fig, (axn, axd) = _figure(2)
    C = _compute_range(fits)
    for f in fits:
        law, col, name = f.allocation_, COLORS.get(f.approach, "gray"), NAMES.get(f.approach, "fit")
        for ax, mean, draws in ((axn, law.n_opt, law.n_opt_draws), (axd, law.d_opt, law.d_opt_draws)):
            ax.plot(C, mean(C), color=col, lw=1.6, label=f"{name}")
            if len(law.draws):
                lo, hi = interval(draws(C), law.level)
                ax.fill_between(C, lo, hi, color=col, alpha=0.2, lw=0)
        if f.approach == 2:
            m = f.minima_[f.minima_.convex]
            axn.scatter(m.budget, m.n_opt, color=col, s=18, zorder=3)
            axd.scatter(m.budget, m.d_opt, color=col, s=18, zorder=3)
        elif f.approach == 1:
            axn.scatter(f.points_.compute, f.points_.params, color=col, s=8, zorder=3)
            axd.scatter(f.points_.compute, f.points_.tokens, color=col, s=8, zorder=3)
    for ax, lab in ((axn, "compute-optimal N"), (axd, "compute-optimal D (tokens)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axn.legend(fontsize=8)
    axn.set_title("N_opt(C) with bootstrap bands")
    axd.set_title("D_opt(C) with bootstrap bands")
    return _save(fig, out, formats)


def plot_contours(fit, out, *, pool=None, formats=FORMATS) -> list[Path]:
    """Contours of the parametric L(N, D), IsoFLOP lines, the compute-optimal line and the runs (Approach 3).
    `pool`: an adaptive sweep's candidates (adaptive_path.pool_marks), marked by `mark_pool`."""
    fig, (ax,) = _figure(width=6.0, height=4.8)
    d = fit.data_
    n, t = (d.params, d.tokens) if pool is None else (np.r_[d.params, pool["params"]], np.r_[d.tokens, pool["tokens"]])
    N = np.geomspace(n.min() / 3, n.max() * 3, 160)
    D = np.geomspace(t.min() / 3, t.max() * 3, 160)
    NN, DD = np.meshgrid(N, D)
    L = fit.predict(NN, DD)
    cs = ax.contourf(NN, DD, L, levels=np.quantile(L, np.linspace(0, 1, 15)), cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label="predicted loss")
    C = np.geomspace(compute_6nd(NN, DD).min(), compute_6nd(NN, DD).max(), 200)
    ax.plot(fit.n_opt(C), fit.d_opt(C), color="crimson", lw=2, label="compute-optimal (N_opt, D_opt)")
    for c in np.geomspace(compute_6nd(N[0], D[0]) * 10, compute_6nd(N[-1], D[-1]) / 10, 6):
        ax.plot(N, tokens_for_compute(c, N), color="white", lw=0.6, ls="--", alpha=0.7)
    ax.scatter(d.params, d.tokens, s=8, color="black", alpha=0.6, label="runs")
    if pool is not None:
        mark_pool(ax, pool["params"], pool["tokens"], pool["batch"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(N[0], N[-1])
    ax.set_ylim(D[0], D[-1])
    ax.set_xlabel("parameters N")
    ax.set_ylabel("tokens D")
    ax.set_title("L(N, D) = E + A/N^alpha + B/D^beta (dashed: constant 6ND)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out, formats)


def plot_residuals(fit, out, *, formats=FORMATS) -> list[Path]:
    """Residuals of a fit (log observed - log fitted) against compute and against N."""
    r = fit.residuals()
    fig, axes = _figure(2)
    xs = (("compute", "compute C (FLOPs)"), ("params", "parameters N"))
    for ax, (col, lab) in zip(axes, xs):
        ax.scatter(r[col], r["residual"], s=10, color=COLORS.get(fit.approach, "gray"), alpha=0.8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(lab)
        ax.set_ylabel("residual (log)")
    axes[0].set_title(f"Residuals, {NAMES.get(fit.approach, 'fit')}")
    return _save(fig, out, formats)


def plot_saturation(result, task: str, out, *, by_compute=None, formats=FORMATS) -> list[Path]:
    """A task's metric against size (and against compute when `by_compute` is given): fitted curves per
    size-dependent mode with bands, size-independent baselines (LightGBM, ceiling) as horizontal lines."""
    results = [result] + ([by_compute] if by_compute is not None else [])
    fig, axes = _figure(len(results))
    palette = matplotlib.colormaps["tab10"]
    for ax, res in zip(axes, results):
        pts = res.points[res.points.task == task]
        modes = sorted(pts["mode"].unique())
        for i, mode in enumerate(modes):
            color = palette(i)
            g = pts[pts["mode"] == mode]
            yerr = None
            if {"low", "high"} <= set(g.columns) and g[["low", "high"]].notna().all().all():
                yerr = [g.value - g.low, g.high - g.value]
            ax.errorbar(g[res.x], g.value, yerr=yerr, fmt="o", ms=4, color=color, lw=0.8, label=mode)
            f = res.fits.get((task, mode))
            if f is not None:
                x = np.geomspace(g[res.x].min(), g[res.x].max() * 4, 120)
                ax.plot(x, f.predict(x), color=color, lw=1.4)
                if len(f.boot_coef_):
                    lo, hi = interval(f.predict_draws(x), f.level)
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
                s = f.saturation_.value
                if x[0] <= s <= x[-1] and mode in res.primary:
                    ax.axvline(s, color=color, ls=":", lw=1.2)
        base = res.baselines[res.baselines.task == task]
        for j, (mode, g) in enumerate(base.groupby("mode")):
            v = g.value.mean()
            color = palette(len(modes) + j)
            ax.axhline(v, color=color, ls="--", lw=1.2, label=f"{mode} (size-independent)")
            if {"low", "high"} <= set(g.columns) and g[["low", "high"]].notna().all().all():
                ax.axhspan(g.low.mean(), g.high.mean(), color=color, alpha=0.1, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("parameters N" if res.x == "params" else "pretraining compute (FLOPs)")
        ax.set_ylabel(res.metric)
        ax.set_title(f"{task}: {res.metric} against {'size' if res.x == 'params' else 'compute'}")
    axes[0].legend(fontsize=7)
    return _save(fig, out, formats)
