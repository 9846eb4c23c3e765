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
    reps = {"seeds": df["seed"].to_numpy() if "seed" in df.columns else None,
            "lrs": df["lr"].to_numpy(dtype=float) if "lr" in df.columns else None}
    try:
        fits[3] = ParametricFit(n_boot=n_boot, seed=seed).fit(df.params, df.tokens, df.loss, budget=budget, **reps)
    except AnalysisError as e:
        skipped[3] = str(e)
    try:
        fits[2] = IsoFlopFit(n_boot=n_boot, seed=seed).fit(df.params, df.compute, df.loss, budget=budget, **reps)
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
    n_boot: int = 1000,
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

    for name, df_group in groups:
        name = str(name)
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)
        df = _full_data(df_group)
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
                           notes=list(f.notes_), extrapolation=_lobo(f), hold_out=_hold_out_of(f))
            d = fr.to_dict()
            d.pop("columns")
            d["allocation"] = allocs[k].to_dict()
            results_json[f"approach_{k}"] = d
        report_json["objectives"][name] = {"n_runs": int(len(df)), "fits": results_json,
                                           "not_fitted": {f"approach_{k}": v for k, v in skipped.items()}}
        body.append(_section(name, df, fits, skipped, allocs, at, figs, out))
        body.append(_extrapolation_section(results_json))
        body.append(_conventions_section(df, at, max_tokens, min(n_boot, 100), seed, report_json["objectives"][name]))
        body.append(_data_constrained_section(df_group, at, max_tokens, n_boot, seed, report_json["objectives"][name],
                                              summary, name))

    compute = compute_used(df_all)
    report_json["compute"] = compute
    if compute["branches"]:
        summary.append(f"The study trained {compute['used_flops']:.3g} FLOPs ({compute['convention']} count): "
                       f"{compute['branches']} of its {compute['runs']} runs were WSD cooldown branches forked from "
                       f"trunks; the same grid under cosine (every run from scratch) would have cost "
                       f"{compute['cosine_flops']:.3g} FLOPs, {compute['ratio']:.2f}x as much.")
    else:
        summary.append(f"The study trained {compute['used_flops']:.3g} FLOPs ({compute['convention']} count) "
                       f"in {compute['runs']} runs.")

    if downstream is not None:
        from .report_downstream import downstream_sections

        body += downstream_sections(downstream, out, n_boot=n_boot, seed=seed, report_json=report_json,
                                    summary=summary, runs_by_objective=runs_by_objective, loss_at=loss_at)

    page = _page(title, summary, body)
    (out / "fits.json").write_text(json.dumps(report_json, indent=2, allow_nan=False, default=_json_default))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def compute_used(df: pd.DataFrame) -> dict:
    """FLOPs the finished runs trained, and what the same runs would have cost each trained from scratch (as
    under cosine). A WSD branch (scaling/wsd.py) trains only from the step it forked at (`forked_at_step`;
    none recorded: from step 0), so its share is 1 - fork / steps. The full FLOP count when every run has one,
    else 6ND."""
    full = "flops_full" in df.columns and len(df) > 0 and bool(np.isfinite(df["flops_full"].to_numpy(float)).all())
    flops = df["flops_full" if full else "compute"].to_numpy(float)
    fork = (df["forked_at_step"] if "forked_at_step" in df.columns else pd.Series(np.nan, index=df.index))
    fork = pd.to_numeric(fork, errors="coerce").fillna(0).to_numpy(float)
    steps = pd.to_numeric(df["steps"], errors="coerce").to_numpy(float) if "steps" in df.columns \
        else np.full(len(df), np.nan)
    share = np.where((fork > 0) & (steps > 0), 1 - fork / np.where(steps > 0, steps, 1), 1.0)
    used, cosine = float(np.sum(flops * share)), float(np.sum(flops))
    return {"used_flops": used, "cosine_flops": cosine, "ratio": cosine / used if used > 0 else None,
            "runs": int(len(df)), "branches": int(np.sum(fork > 0)), "convention": "full" if full else "6ND"}


def _full_data(df: pd.DataFrame) -> pd.DataFrame:
    """The runs on all the data: runs restricted to a fraction of the cohort (a data-constrained arm) repeat
    their data by design and are fitted only by the data-constrained law."""
    if "train_fraction" in df.columns:
        return df[df["train_fraction"].fillna(1.0).astype(float) >= 1.0]
    return df


def _hold_out_of(fit):
    from .extrapolation import hold_out_largest, isoflop_hold_out

    try:
        if fit.approach == 2:
            return isoflop_hold_out(fit)
        if fit.approach == 3:
            return hold_out_largest(fit.data_, lambda t: ParametricFit(n_boot=0).fit(t.params, t.tokens, t.loss))
    except AnalysisError:
        pass
    return None


def _extrapolation_section(results_json: dict) -> str:
    """The headline reliability figure: each fit without its largest budget (or N), predicting it."""
    rows = []
    for key, d in results_json.items():
        ex = d.get("extrapolation")
        if not ex:
            continue
        what = f"budget {_g(ex.get('budget'))}" if ex.get("budget") else f"N {_g(ex.get('params'))}"
        n, lo = ex.get("n_opt") or {}, ex.get("loss") or {}
        diff = "" if lo.get("difference") is None else f"{lo['difference']:+.4f}"
        rows.append(f"<tr><td>{html.escape(key.replace('_', ' '))}</td><td>{what}</td>"
                    f"<td>{_g(n.get('predicted'))}</td><td>{_g(n.get('observed'))}</td><td>{_g(n.get('ratio'))}</td>"
                    f"<td>{_g(lo.get('predicted'))}</td><td>{_g(lo.get('observed'))}</td>"
                    f"<td>{diff}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Extrapolation: the largest budget predicted from the others</h3>"
            "<p>Each law is refitted without its largest budget (ladders: its largest N) and asked for that "
            "budget's N_opt (against the minimum of a parabola through its runs: a ratio) and its best run's loss "
            "(a difference). This is the error a recommendation one step beyond the runs pays.</p>"
            "<table><tr><th>fit</th><th>held out</th><th>N_opt predicted</th><th>N_opt observed</th>"
            "<th>ratio</th><th>loss predicted</th><th>loss observed</th><th>difference</th></tr>"
            + "".join(rows) + "</table>")


def _conventions_section(df: pd.DataFrame, at: float, max_tokens, n_boot: int, seed: int, store: dict) -> str:
    """The Approach 3 recommendation under each parameter and compute convention, side by side."""
    from .conventions import PARAMS_COLUMNS
    from .summary import fit_table

    if "flops_full" not in df.columns or not np.isfinite(df["flops_full"].astype(float)).all():
        return ""
    rows, out = [], {}
    for pc, col in PARAMS_COLUMNS.items():
        if col not in df.columns:
            continue
        for cc in ("full", "6nd"):
            try:
                r = fit_table(df, params=col, tokens="tokens", loss="loss", approach=3, n_boot=n_boot, seed=seed,
                              compute_convention=cc, budget=at, available_tokens=max_tokens)
            except AnalysisError as e:
                rows.append(f"<tr><td>{pc}</td><td>{cc}</td><td colspan='3'>{html.escape(str(e))}</td></tr>")
                continue
            a = r.optimal
            out[f"{pc}/{cc}"] = {"N": a.n_opt.to_dict(), "D": a.d_opt.to_dict(),
                                 "loss": None if a.loss is None else a.loss.to_dict()}
            rows.append(f"<tr><td>{pc.replace('_', '-')}</td><td>{cc}</td><td>{_est(a.n_opt)}</td>"
                        f"<td>{_est(a.d_opt)}</td><td>{_est(a.loss)}</td></tr>")
    if not rows:
        return ""
    store["conventions"] = out
    return (f"<h3>The recommendation under each convention at {at:.3g} FLOPs</h3>"
            "<p>N counted with or without embeddings and the head; the budget spent on 6N FLOPs per token or on the "
            "full count (attention and head included). medscale recommends total parameters and the full count "
            "(docs/SCIENCE.md): at small sizes the head and attention are much of the compute, and 6N with "
            "non-embedding N misplaces the optimum.</p><table><tr><th>N counts</th><th>compute</th><th>N_opt</th>"
            "<th>D_opt</th><th>predicted loss</th></tr>" + "".join(rows) + "</table>")


def _data_constrained_section(df: pd.DataFrame, at: float, max_tokens, n_boot: int, seed: int, store: dict,
                              summary: list[str], name: str) -> str:
    """The data-constrained law when runs record their unique tokens and some repeat their data."""
    from .data_constrained import DataConstrainedFit

    if "unique_tokens" not in df.columns or not np.isfinite(df["unique_tokens"].astype(float)).all():
        return ""
    if not (df["tokens"] > df["unique_tokens"] * (1 + 1e-9)).any():
        return ""
    try:
        fit = DataConstrainedFit(n_boot=n_boot, seed=seed).fit(
            df.params, df.tokens, df.unique_tokens, df.loss,
            budget=df["budget"].to_numpy() if "budget" in df else None,
            seed_col=df["seed"].to_numpy() if "seed" in df else None,
            lr=df["lr"].to_numpy(dtype=float) if "lr" in df else None)
    except AnalysisError as e:
        return f"<h3>Data-constrained law</h3><div class='warn'>not fitted: {html.escape(str(e))}</div>"
    from .extrapolation import hold_out_largest
    from .summary import _plain_tree

    U = float(max_tokens) if max_tokens else float(df["unique_tokens"].max())
    al = fit.allocate(at, U)
    free = compute_optimal(fit, at)
    ex = hold_out_largest(fit.data_, lambda t: DataConstrainedFit(n_boot=0).fit(
        t.params, t.tokens, t.unique_tokens, t.loss))
    store["data_constrained"] = {**{k: e.to_dict() for k, e in fit.estimates_.items()},
                                 "allocation": al.to_dict(), "extrapolation": _plain_tree(ex),
                                 "warnings": list(fit.warnings_) + al.warnings}
    r = fit.estimates_["R_star_D"]
    summary.append(
        f"{name}: repeated tokens lose value with R*_D = {_g(r.value)} epochs"
        + (f" (interval {_g(r.low)} to {_g(r.high)})" if np.isfinite(r.low) else "")
        + f"; with {U:.3g} unique tokens at {at:.3g} FLOPs, train {_g(al.n_opt.value)} parameters for "
        f"{al.epochs.value:.2g} epochs (unlimited data would suggest {_g(free.n_opt.value)}).")
    h = ["<h3>Data-constrained law (Muennighoff et al. 2023)</h3>",
         "<p>L = E + A/N^alpha + B/D'^beta with D' = U + U R*_D (1 - exp(-(D/U - 1)/R*_D)): a repeated token is "
         "worth less than a fresh one.</p><table><tr><th>quantity</th><th>estimate [95% interval]</th></tr>"]
    h += [f"<tr><td>{k}</td><td>{_est(fit.estimates_[k])}</td></tr>" for k in ("R_star_D", "E", "alpha", "beta")]
    h.append("</table>")
    h.append(f"<p>At {at:.3g} FLOPs with {U:.3g} unique tokens: N = {_est(al.n_opt)}, D = {_est(al.d_opt)}, "
             f"epochs = {_est(al.epochs)}, predicted loss {_est(al.loss)}; with unlimited data N = "
             f"{_est(free.n_opt)}.</p>")
    h += [f"<p>{html.escape(n)}</p>" for n in al.notes]
    if ex:
        what = f"budget {_g(ex.get('budget'))}" if ex.get("budget") else f"N {_g(ex.get('params'))}"
        h.append(f"<p>Extrapolation (refitted without the largest {what}): its best run's loss predicted "
                 f"{ex['loss']['predicted']:.4f}, observed {ex['loss']['observed']:.4f} "
                 f"(difference {ex['loss']['difference']:+.4f}; mean absolute {ex['loss']['mean_abs_difference']:.4f})."
                 + (f" N_opt predicted / observed: {_g(ex['n_opt']['ratio'])}." if ex.get("n_opt") else "")
                 + "</p>")
    warns = list(fit.warnings_) + al.warnings
    if warns:
        h.append("<div class='warn'><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warns) + "</ul></div>")
    return "\n".join(h)


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
