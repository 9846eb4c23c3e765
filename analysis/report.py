"""A self-contained HTML report of a sweep: fits with intervals, the compute-optimal recommendation,
warnings, a plain-language summary, the figures, and downstream saturation. Writes `index.html`, `fits.json`
and the PNG/SVG figures into one folder; the HTML references figures by relative path only.
"""
from __future__ import annotations

from .conventions import compute_6nd
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .envelope import EnvelopeFit
from .errors import AnalysisError
from .isoflop import IsoFlopFit
from .optimal import Allocation, compute_optimal
from .parametric import ParametricFit
from .summary import FitResult

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:0.5em 1em}
.summary{background:#eef5ff;border-left:4px solid #3070d0;padding:0.5em 1em}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code{background:#f4f4f4;padding:0 0.2em}
"""


def _g(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _est(e) -> str:
    if e is None:
        return ""
    if np.isfinite(e.low):
        return f"{_g(e.value)} <small>[{_g(e.low)}, {_g(e.high)}]</small>"
    return _g(e.value)


def _clean(results: pd.DataFrame) -> pd.DataFrame:
    df = results
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "done"]
    cols = [c for c in ("params", "tokens", "loss") if c in df.columns]
    if len(cols) < 3:
        missing = {"params", "tokens", "loss"} - set(cols)
        raise AnalysisError(f"results table lacks column(s) {sorted(missing)}; available: {list(results.columns)}")
    ok = np.all(np.isfinite(df[cols].to_numpy(dtype=float)), axis=1) & np.all(df[cols].to_numpy(dtype=float) > 0, axis=1)
    df = df[ok].copy()
    if "compute" not in df.columns:
        df["compute"] = compute_6nd(df["params"], df["tokens"])
    return df


def _fits_for(df: pd.DataFrame, curves: pd.DataFrame | None, n_boot: int, seed: int):
    """Every approach that the data support; a reason for each that they do not."""
    fits, skipped = {}, {}
    budget = df["budget"].to_numpy() if "budget" in df.columns else None
    try:
        fits[3] = ParametricFit(n_boot=n_boot, seed=seed).fit(df.params, df.tokens, df.loss, budget=budget)
    except AnalysisError as e:
        skipped[3] = str(e)
    try:
        fits[2] = IsoFlopFit(n_boot=n_boot, seed=seed).fit(df.params, df.compute, df.loss, budget=budget)
    except AnalysisError as e:
        skipped[2] = str(e)
    try:
        if curves is not None and "run_id" in df.columns:
            c = curves.merge(df[["run_id", "params"]], on="run_id", how="inner")
            if "compute" not in c.columns:
                c["compute"] = compute_6nd(c["params"], c["tokens"])
            c = c[np.isfinite(c["loss"]) & (c["loss"] > 0) & (c["compute"] > 0)]
            fits[1] = EnvelopeFit(n_boot=n_boot, seed=seed).fit(c.run_id, c.params, c.compute, c.loss)
        else:
            rid = df["run_id"] if "run_id" in df.columns else np.arange(len(df))
            fits[1] = EnvelopeFit(n_boot=n_boot, seed=seed).fit(rid, df.params, df.compute, df.loss)
    except AnalysisError as e:
        skipped[1] = str(e)
    return fits, skipped


def _lobo(fit):
    try:
        if fit.approach == 2:
            return fit.leave_one_budget_out()
        if fit.approach == 3 and "budget" in fit.data_:
            return fit.leave_one_budget_out()
    except AnalysisError:
        pass
    return None


def _summary(name: str, fits: dict, allocs: dict[int, Allocation], budget: float) -> list[str]:
    """Plain-language sentences generated from the numbers."""
    lines = []
    if not fits:
        return [f"{name}: no scaling law could be fitted to these runs (see the reasons below)."]
    best = max(fits)  # the parametric fit when there is one, else IsoFLOP
    e = fits[best].estimates_
    a, b = e["a"], e["b"]
    lines.append(
        f"{name}: by {plots.NAMES[best]}, the compute-optimal model grows as C^{a.value:.2f} "
        + (f"(95% interval {a.low:.2f} to {a.high:.2f}) " if np.isfinite(a.low) else "")
        + f"and its data as C^{b.value:.2f}; "
        + ("parameters and tokens should grow about equally with compute."
           if abs(a.value - 0.5) < 0.05 else
           ("extra compute should go more to parameters than to data." if a.value > 0.5
            else "extra compute should go more to data than to parameters."))
    )
    al = allocs.get(best)
    if al is not None:
        lines.append(
            f"At {budget:.3g} FLOPs, train about {_g(al.n_opt.value)} parameters on {_g(al.d_opt.value)} tokens "
            f"(about {al.tokens_per_param.value:.0f} tokens per parameter; interval "
            f"{_g(al.n_opt.low)} to {_g(al.n_opt.high)} parameters)."
            + (" Data are the binding limit at this budget." if al.token_limited else "")
        )
    if 3 in fits:
        p = fits[3].estimates_
        lines.append(
            f"The fitted irreducible loss is E = {p['E'].value:.3g}; loss falls with size as N^-{p['alpha'].value:.2f} "
            f"and with data as D^-{p['beta'].value:.2f}."
        )
    others = [k for k in fits if k != best]
    for k in others:
        ek = fits[k].estimates_["a"]
        overlap = np.isfinite(ek.low) and np.isfinite(a.low) and ek.low <= a.high and a.low <= ek.high
        lines.append(
            f"{plots.NAMES[k]} gives a = {ek.value:.2f}: "
            + ("consistent with the above within the intervals." if overlap else
               "not consistent with the above; trust the approach whose warnings are fewer, or add runs.")
        )
    return lines


def write_report(
    out_dir: str | Path,
    *,
    results: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    downstream: pd.DataFrame | None = None,
    budget: float | None = None,
    title: str = "medscale scaling report",
    summary_lines: list[str] | None = None,
    max_tokens: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Path:
    """Fit every approach the results support (per objective), plot, and write out_dir/index.html + fits.json.

    `budget` (FLOPs) is where the compute-optimal recommendation is made (default: the largest compute in the
    table); `max_tokens` caps D there. Returns the path of index.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df_all = _clean(results)
    if df_all.empty:
        raise AnalysisError("no finished runs with finite, positive params, tokens and loss in the results table")
    groups = list(df_all.groupby("objective")) if "objective" in df_all.columns else [("all runs", df_all)]
    at = float(budget) if budget is not None else float(df_all["compute"].max())
    body: list[str] = []
    summary: list[str] = list(summary_lines or [])
    report_json: dict = {"title": title, "budget": at, "max_tokens": max_tokens, "objectives": {}}
    runs_by_objective, loss_at = {}, {}  # for the downstream forecast: each objective's runs and predicted loss

    for name, df in groups:
        name = str(name)
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)
        fits, skipped = _fits_for(df, curves, n_boot, seed)
        allocs = {k: compute_optimal(f, at, max_tokens=max_tokens) for k, f in fits.items()}
        runs_by_objective[name], loss_at[name] = df, (allocs[3].loss if 3 in allocs else None)
        summary += _summary(name, fits, allocs, at)
        figs: list[tuple[str, Path]] = []
        if 2 in fits:
            figs.append(("IsoFLOP profiles", plots.plot_isoflop(fits[2], out / f"{slug}_isoflop")[0]))
        if 1 in fits:
            figs.append(("Loss against compute and the envelope", plots.plot_frontier(fits[1], out / f"{slug}_frontier")[0]))
        if fits:
            figs.append(("Compute-optimal N and D", plots.plot_allocation(list(fits.values()), out / f"{slug}_allocation")[0]))
        if 3 in fits:
            figs.append(("Parametric fit", plots.plot_contours(fits[3], out / f"{slug}_contours")[0]))
            figs.append(("Residuals of the parametric fit", plots.plot_residuals(fits[3], out / f"{slug}_residuals")[0]))
        results_json = {}
        for k, f in fits.items():
            fr = FitResult(approach=k, fit=f, n_points=f.n_points_, columns={}, warnings=list(f.warnings_),
                           notes=list(f.notes_), extrapolation=_lobo(f))
            d = fr.to_dict()
            d.pop("columns")
            d["allocation"] = allocs[k].to_dict()
            results_json[f"approach_{k}"] = d
        report_json["objectives"][name] = {"n_runs": int(len(df)), "fits": results_json,
                                           "not_fitted": {f"approach_{k}": v for k, v in skipped.items()}}
        body.append(_section(name, df, fits, skipped, allocs, at, figs, out))

    if downstream is not None:
        from .report_downstream import downstream_sections

        body += downstream_sections(downstream, out, n_boot=n_boot, seed=seed, report_json=report_json,
                                    summary=summary, runs_by_objective=runs_by_objective, loss_at=loss_at)

    page = _page(title, summary, body)
    (out / "fits.json").write_text(json.dumps(report_json, indent=2, allow_nan=False, default=_json_default))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(type(o))


def _section(name, df, fits, skipped, allocs, at, figs, out) -> str:
    h = [f"<h2>{html.escape(name)} <small>({len(df)} runs)</small></h2>"]
    if fits:
        keys = sorted(fits)
        names = []
        for k in keys:
            names += [n for n in fits[k].estimates_ if n not in names]
        h.append("<h3>Fits (95% bootstrap intervals)</h3><table><tr><th>quantity</th>"
                 + "".join(f"<th>{plots.NAMES[k]}</th>" for k in keys) + "</tr>")
        for n in names:
            h.append(f"<tr><td>{html.escape(n)}</td>"
                     + "".join(f"<td>{_est(fits[k].estimates_.get(n))}</td>" for k in keys) + "</tr>")
        h.append("<tr><td>points used</td>" + "".join(f"<td>{fits[k].n_points_}</td>" for k in keys) + "</tr></table>")
        h.append(f"<h3>Compute-optimal allocation at {at:.3g} FLOPs</h3><table><tr><th>approach</th><th>N_opt</th>"
                 "<th>D_opt (tokens)</th><th>tokens per parameter</th><th>predicted loss</th></tr>")
        for k in keys:
            al = allocs[k]
            h.append(f"<tr><td>{plots.NAMES[k]}</td><td>{_est(al.n_opt)}</td><td>{_est(al.d_opt)}</td>"
                     f"<td>{_est(al.tokens_per_param)}</td><td>{_est(al.loss) if al.loss else 'n/a'}</td></tr>")
        h.append("</table>")
        notes = sorted({n for k in keys for n in allocs[k].notes})
        h += [f"<p>{html.escape(n)}</p>" for n in notes]
    warns = [(plots.NAMES[k], w) for k in sorted(fits) for w in fits[k].warnings_]
    warns += [(plots.NAMES[k], f"not fitted: {why}") for k, why in sorted(skipped.items())]
    if warns:
        h.append("<h3>Warnings</h3><div class='warn'><ul>"
                 + "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(w)}</li>" for a, w in warns) + "</ul></div>")
    notes = [(plots.NAMES[k], n) for k in sorted(fits) for n in fits[k].notes_]
    if notes:
        h.append("<details><summary>Notes on the fits</summary><ul>"
                 + "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(n)}</li>" for a, n in notes) + "</ul></details>")
    for caption, path in figs:
        rel = path.relative_to(out).as_posix()
        svg = Path(rel).with_suffix(".svg").as_posix()
        h.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
                 f"<figcaption>{html.escape(caption)} (<a href='{html.escape(svg)}'>SVG</a>)</figcaption></figure>")
    return "\n".join(h)


def _page(title: str, summary: list[str], body: list[str]) -> str:
    s = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<div class='summary'><h2>Summary</h2><ul>{s}</ul></div>\n" + "\n".join(body) + "\n</body></html>\n"
    )
