"""A self-contained HTML report of a sweep: fits with intervals, the compute-optimal recommendation,
warnings, a plain-language summary, the figures, and downstream saturation. Writes `index.html`, `fits.json`
and the PNG/SVG figures into one folder; the HTML references figures by relative path only.

Fit once, show everywhere: `analyze_results` fits every law once per objective (Approaches 1-3 on the runs
with all the data, the data-constrained law where runs repeat their data, Approach 3 on each parameter
convention) into an `Analysis`; `write_report` only renders it, and the pipeline hands the same objects to the
recommendation (scaling/plan/recommend.py) and to the CLI, so a quantity is one number wherever it is printed.
A fitted parameter at its optimisation bound is named beside its value (analysis/bounds.py).
"""
from __future__ import annotations

from .conventions import PARAMS_COLUMNS, compute_6nd, full_flops_per_token
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import family_plots, plots
from .adaptive_path import AdaptiveSweep, adaptive_section, path_json, path_sentence
from .bounds import AtBound, at_bound, marks, short
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
.bound{color:#a34700;font-weight:bold;font-size:0.85em}
"""


def _g(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _est(e, mark: AtBound | None = None, name: str | None = None) -> str:
    if e is None:
        return ""
    text = f"{_g(e.value)} <small>[{_g(e.low)}, {_g(e.high)}]</small>" if np.isfinite(e.low) else _g(e.value)
    if mark is not None:
        text += f" <span class='bound' title='{html.escape(mark.meaning)}'>{html.escape(short(mark, name))}</span>"
    return text


def _bound_items(label: str, fit) -> list[str]:
    """<li> lines naming each parameter of `fit` at a bound (or whose interval reaches one), with its meaning."""
    return [f"<li><b>{html.escape(label)}</b>: {html.escape(b.parameter)} = {_g(b.value)} {html.escape(b.label)}: "
            f"{html.escape(b.meaning)}</li>" for b in at_bound(fit)]


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


def _fits_for(df: pd.DataFrame, curves: pd.DataFrame | None, n_boot: int, seed: int, n_jobs: int = 1):
    """Every approach that the data support; a reason for each that they do not."""
    fits, skipped = {}, {}
    budget = df["budget"].to_numpy() if "budget" in df.columns else None
    reps = {"seeds": df["seed"].to_numpy() if "seed" in df.columns else None,
            "lrs": df["lr"].to_numpy(dtype=float) if "lr" in df.columns else None}
    try:
        fits[3] = ParametricFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(df.params, df.tokens, df.loss,
                                                                          budget=budget, **reps)
    except AnalysisError as e:
        skipped[3] = str(e)
    try:
        fits[2] = IsoFlopFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(df.params, df.compute, df.loss,
                                                                       budget=budget, **reps)
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


def repeats_data(runs: pd.DataFrame) -> bool:
    """Every run records its unique tokens U and some run trained on more tokens than that: the runs identify
    the data-constrained law, which is then the law fitted to them (here and in scaling/plan/recommend.py)."""
    if not len(runs) or "unique_tokens" not in runs.columns or "tokens" not in runs.columns:
        return False
    u = pd.to_numeric(runs["unique_tokens"], errors="coerce").to_numpy(float)
    d = pd.to_numeric(runs["tokens"], errors="coerce").to_numpy(float)
    return bool(np.isfinite(u).all() and (d > u * (1 + 1e-9)).any())


def flops_per_token_of(runs: pd.DataFrame, params_col: str = "params") -> Callable | None:
    """Full FLOPs per token as a function of N (conventions.full_flops_per_token) from the runs' recorded full
    counts; None unless every run records one."""
    if not len(runs) or "flops_full" not in runs.columns or params_col not in runs.columns:
        return None
    if not np.isfinite(pd.to_numeric(runs["flops_full"], errors="coerce").to_numpy(float)).all():
        return None
    return full_flops_per_token(runs[params_col], runs["tokens"], runs["flops_full"])


@dataclass
class ObjectiveFits:
    """Every fit of one objective's runs, made once; the report, the recommendation and the CLI read these."""
    name: str
    runs: pd.DataFrame  # every finished run of the objective
    df: pd.DataFrame  # the runs on all the data (a data-constrained arm left out): what Approaches 1-3 fit
    fits: dict = field(default_factory=dict)  # approach -> fitted object
    skipped: dict = field(default_factory=dict)  # approach -> why not fitted
    results: dict = field(default_factory=dict)  # approach -> summary.FitResult (extrapolation included)
    allocs: dict = field(default_factory=dict)  # approach -> Allocation at the budget, C = 6ND
    fpt: Callable | None = None  # full FLOPs per token of N, when every run records its full count
    data_constrained: FitResult | None = None  # L(N, D, U) on every run, where some repeat their data
    dc_error: str | None = None
    dc_tokens: float | None = None  # the unique tokens the data-constrained allocation is made for
    dc_alloc: Allocation | None = None  # ... at the budget with dc_tokens unique tokens
    dc_free: Allocation | None = None  # ... at the budget with unlimited data
    conventions: dict = field(default_factory=dict)  # parameter convention -> FitResult of Approach 3, or why not
    fpt_by_column: dict = field(default_factory=dict)  # params column -> full FLOPs per token of that N
    families: object = None  # selection.FamilyChoice: the law families, chosen by error on held-out costlier runs
    families_n_opt: object = None  # selection.MixtureEstimate: N_opt at the budget across the families
    families_error: str | None = None  # why the families were not fitted

    @property
    def law(self) -> FitResult | None:
        """The law a recommendation is made from: the data-constrained law where runs repeat their data, else
        Approach 3 (the same rule as scaling/plan/recommend.py when it fits for itself)."""
        return self.data_constrained if self.data_constrained is not None else self.results.get(3)


@dataclass
class Analysis:
    """Every objective's fits at one budget, with the settings they were made with."""
    budget: float
    max_tokens: float | None
    n_boot: int
    seed: int
    df_all: pd.DataFrame
    objectives: dict = field(default_factory=dict)  # name -> ObjectiveFits
    fits_json: dict | None = None  # what fits.json holds, once write_report has rendered it


def analyze_results(results: pd.DataFrame, curves: pd.DataFrame | None = None, *, budget: float | None = None,
                    max_tokens: float | None = None, n_boot: int = 1000, seed: int = 0, n_jobs: int = 1) -> Analysis:
    """Fit every approach the results support, per objective, once. `budget` (FLOPs; default the largest
    compute in the table) is where allocations are made; `max_tokens` caps D there. `n_jobs` processes share
    the bootstraps and validation folds (inside `bootstrap.worker_pool`, one pool for all); the numbers do not
    depend on it."""
    df_all = _clean(results)
    if df_all.empty:
        raise AnalysisError("no finished runs with finite, positive params, tokens and loss in the results table")
    groups = list(df_all.groupby("objective")) if "objective" in df_all.columns else [("all runs", df_all)]
    at = float(budget) if budget is not None else float(df_all["compute"].max())
    analysis = Analysis(budget=at, max_tokens=max_tokens, n_boot=n_boot, seed=seed, df_all=df_all)
    for name, df_group in groups:
        name = str(name)
        df = _full_data(df_group)
        o = ObjectiveFits(name=name, runs=df_group, df=df)
        o.fits, o.skipped = _fits_for(df, curves, n_boot, seed, n_jobs)
        o.allocs = {k: compute_optimal(f, at, max_tokens=max_tokens) for k, f in o.fits.items()}
        o.results = {k: FitResult(approach=k, fit=f, n_points=f.n_points_,
                                  columns={"params": "params", "loss": "loss", "tokens": "tokens"},
                                  warnings=list(f.warnings_), notes=list(f.notes_), extrapolation=_lobo(f),
                                  hold_out=_hold_out_of(f))
                     for k, f in o.fits.items()}
        o.fpt = flops_per_token_of(df_group)
        _fit_data_constrained(o, at, max_tokens, n_boot, seed, n_jobs)
        _fit_conventions(o, n_boot, seed, n_jobs)
        _fit_families(o, at, max_tokens, n_boot, seed, n_jobs)
        analysis.objectives[name] = o
    return analysis


def _fit_data_constrained(o: ObjectiveFits, at: float, max_tokens, n_boot: int, seed: int, n_jobs: int = 1) -> None:
    """The data-constrained law on every run of the objective when some repeat their data, and its allocation at
    the budget (with the unique tokens available, and with unlimited data) in the recommendation's FLOP count."""
    from .summary import fit_table

    df = o.runs
    if not repeats_data(df):
        return
    try:
        o.data_constrained = fit_table(
            df, params="params", loss="loss", tokens="tokens", approach=3, n_boot=n_boot, seed=seed, n_jobs=n_jobs,
            budget_col="budget" if "budget" in df and df["budget"].notna().any() else None,
            unique_tokens="unique_tokens", compute_convention="6nd")
    except AnalysisError as e:
        o.dc_error = str(e)
        return
    o.dc_tokens = float(max_tokens) if max_tokens else float(df["unique_tokens"].max())
    o.dc_alloc = compute_optimal(o.data_constrained.fit, at, max_tokens=o.dc_tokens, flops_per_token=o.fpt)
    o.dc_free = compute_optimal(o.data_constrained.fit, at, flops_per_token=o.fpt)


def _fit_families(o: ObjectiveFits, at: float, max_tokens, n_boot: int, seed: int, n_jobs: int = 1) -> None:
    """The law families (analysis/selection.py) on the runs the recommendation's law was fitted to (every run
    with its unique tokens where the data-constrained law is that law, else the runs on all the data), and their
    mixture's N_opt at the budget in the recommendation's FLOP count and with its unique tokens (`max_tokens`;
    None: unlimited, as the recommendation without it).
    That law itself is one of the families, not refitted (the report's fit is the family's)."""
    from .families import DEFAULT_N_BOOT, ChinchillaFamily, DataConstrainedFamily
    from .selection import choose

    dc = o.data_constrained is not None
    df = o.runs if dc else o.df
    fitted = ({"data_constrained": DataConstrainedFamily.from_fit(o.data_constrained.fit)} if dc else
              {"chinchilla": ChinchillaFamily.from_fit(o.fits[3])} if 3 in o.fits else {})
    # validation aims at the runs the recommendation is about: its own N_opt and D_opt at the budget
    alloc = o.dc_alloc if dc else o.allocs.get(3)
    target = None if alloc is None else (np.array([alloc.n_opt.value]), np.array([alloc.d_opt.value]))
    try:
        o.families = choose(df["params"], df["tokens"], df["loss"], df["unique_tokens"] if dc else None,
                            n_boot=min(n_boot, DEFAULT_N_BOOT), seed=seed, n_jobs=n_jobs, fitted=fitted, target=target,
                            seeds=df["seed"].to_numpy() if "seed" in df.columns else None,
                            lrs=df["lr"].to_numpy(dtype=float) if "lr" in df.columns else None)
        o.families_n_opt = o.families.n_opt(at, max_tokens if dc else None, flops_per_token=o.fpt)
    except AnalysisError as e:
        o.families, o.families_error = None, str(e)


def _fit_conventions(o: ObjectiveFits, n_boot: int, seed: int, n_jobs: int = 1) -> None:
    """Approach 3 on N under each parameter convention: the fit above where its N is that convention's, else
    one fit on that N with the same resamples and seed (N differs, so the numbers do: a different quantity)."""
    df = o.df
    if "flops_full" not in df.columns or not np.isfinite(df["flops_full"].astype(float)).all():
        return
    for pc, col in PARAMS_COLUMNS.items():
        if col not in df.columns:
            continue
        o.fpt_by_column[col] = flops_per_token_of(o.runs, col) if col in o.runs else None
        same = 3 in o.results and np.allclose(df[col].to_numpy(float), df["params"].to_numpy(float), rtol=1e-12)
        if same:
            o.conventions[pc] = o.results[3]
            o.fpt_by_column[col] = o.fpt
            continue
        try:
            reps = {"seeds": df["seed"].to_numpy() if "seed" in df.columns else None,
                    "lrs": df["lr"].to_numpy(dtype=float) if "lr" in df.columns else None}
            fit = ParametricFit(n_boot=n_boot, seed=seed, n_jobs=n_jobs).fit(df[col], df.tokens, df.loss, **reps)
            o.conventions[pc] = FitResult(approach=3, fit=fit, n_points=fit.n_points_,
                                          columns={"params": col, "loss": "loss", "tokens": "tokens"},
                                          warnings=list(fit.warnings_), notes=list(fit.notes_))
        except AnalysisError as e:
            o.conventions[pc] = str(e)


def _summary(o: ObjectiveFits, budget: float, rec: dict | None = None) -> list[str]:
    """Plain-language sentences generated from the numbers."""
    name, fits, allocs = o.name, o.fits, o.allocs
    lines = []
    if not fits:
        return [f"{name}: no scaling law could be fitted to these runs (see the reasons below)."]
    best = max(fits)  # the parametric fit when there is one, else IsoFLOP
    e = fits[best].estimates_
    a, b = e["a"], e["b"]
    m = marks(at_bound(fits[best]))
    lines.append(
        f"{name}: by {plots.NAMES[best]}, the compute-optimal model grows as C^{a.value:.2f} "
        + (f"(95% interval {a.low:.2f} to {a.high:.2f}) " if np.isfinite(a.low) else "")
        + (f"(not determined: {short(m['a'], 'a')}) " if "a" in m and m["a"].where == "estimate" else "")
        + f"and its data as C^{b.value:.2f}; "
        + ("parameters and tokens should grow about equally with compute."
           if abs(a.value - 0.5) < 0.05 else
           ("extra compute should go more to parameters than to data." if a.value > 0.5
            else "extra compute should go more to data than to parameters."))
    )
    if rec is not None:
        al = rec["allocation"]
        lines.append(
            f"Recommendation at {budget:.3g} FLOPs ({_law_words(rec['fit'])}, {_flops_words(rec)}): train about "
            f"{_g(al.n_opt.value)} parameters on {_g(al.d_opt.value)} tokens (about "
            f"{al.tokens_per_param.value:.0f} tokens per parameter; interval {_g(al.n_opt.low)} to "
            f"{_g(al.n_opt.high)} parameters)."
            + (f" With {_g(al.max_tokens)} unique tokens: {al.epochs.value:.2g} epochs." if al.epochs is not None else "")
            + (" Data are the binding limit at this budget." if al.token_limited and al.epochs is None else "")
        )
    else:
        al = allocs.get(best)
        if al is not None:
            lines.append(
                f"At {budget:.3g} FLOPs (C = 6ND), train about {_g(al.n_opt.value)} parameters on {_g(al.d_opt.value)} "
                f"tokens (about {al.tokens_per_param.value:.0f} tokens per parameter; interval "
                f"{_g(al.n_opt.low)} to {_g(al.n_opt.high)} parameters)."
                + (" Data are the binding limit at this budget." if al.token_limited else "")
            )
    if 3 in fits:
        p = fits[3].estimates_
        m3 = marks(at_bound(fits[3]))
        E = m3.get("E")
        if E is not None and E.where == "estimate":
            first = f"Approach 3's E = {_g(p['E'].value)} is {E.label}: {E.meaning}"
        else:
            first = f"The fitted irreducible loss (Approach 3) is E = {p['E'].value:.3g}" + (
                f" ({E.label}: {E.meaning})" if E is not None else "")
        exps = "".join(f" ({k} {m3[k].label}: {m3[k].meaning})" for k in ("alpha", "beta")
                       if k in m3 and m3[k].where == "estimate")
        lines.append(f"{first}; loss falls with size as N^-{p['alpha'].value:.2f} "
                     f"and with data as D^-{p['beta'].value:.2f}.{exps}")
    others = [k for k in fits if k != best]
    for k in others:
        ek = fits[k].estimates_["a"]
        overlap = np.isfinite(ek.low) and np.isfinite(a.low) and ek.low <= a.high and a.low <= ek.high
        lines.append(
            f"{plots.NAMES[k]} gives a = {ek.value:.2f}: "
            + ("consistent with the above within the intervals." if overlap else
               "not consistent with the above; trust the approach whose warnings are fewer, or add runs.")
        )
    if 2 in fits and getattr(fits[2], "profile", None) == "curve" and "a" in fits[2].parabola_estimates_:
        c, q = fits[2].estimates_["a"], fits[2].parabola_estimates_["a"]
        lines.append(f"Approach 2 locates each budget's minimum on the exact IsoFLOP curve (a = {c.value:.3f} "
                     f"[{c.low:.3f}, {c.high:.3f}]); the plain parabola over all sizes, biased where the loss rises "
                     f"more steeply on one side, gives a = {q.value:.3f} [{q.low:.3f}, {q.high:.3f}].")
    return lines


def _law_words(law) -> str:
    fit = getattr(law, "fit", law)
    if getattr(fit, "law", None) == "data_constrained":
        return "the data-constrained law L(N, D, U)"
    return "Approach 3, L(N, D)"


def _flops_words(rec: dict) -> str:
    return ("the budget spent on the full FLOP count" if rec.get("compute_convention") == "full"
            else "C = 6ND")


def write_report(
    out_dir: str | Path,
    *,
    results: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    downstream: pd.DataFrame | None = None,
    budget: float | None = None,
    title: str = "medscale scaling report",
    summary_lines: list[str] | None = None,
    max_tokens: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    analysis: Analysis | None = None,
    recommendations: dict | None = None,
    adaptive: list[AdaptiveSweep] | None = None,
) -> Path:
    """Fit every approach the results support (per objective), plot, and write out_dir/index.html + fits.json.

    `budget` (FLOPs) is where the compute-optimal recommendation is made (default: the largest compute in the
    table); `max_tokens` caps D there. With `analysis` (from `analyze_results`) nothing is refitted: the report
    renders those fits, and `recommendations` (objective -> scaling.recommend.recommend(...) made from the same
    analysis) adds each objective's recommendation. `adaptive` (analysis/adaptive_path.py, one per adaptive sweep
    in the store) adds a section per sweep and marks its chosen runs on its objective's figures. Returns the path
    of index.html; the dict written to fits.json is left in `analysis.fits_json`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if analysis is None:
        if results is None:
            raise AnalysisError("write_report needs a results table or an analysis")
        analysis = analyze_results(results, curves, budget=budget, max_tokens=max_tokens, n_boot=n_boot, seed=seed)
    recommendations = recommendations or {}
    at, max_tokens, n_boot, seed = analysis.budget, analysis.max_tokens, analysis.n_boot, analysis.seed
    body: list[str] = []
    summary: list[str] = list(summary_lines or [])
    report_json: dict = {"title": title, "budget": at, "max_tokens": max_tokens, "objectives": {}}
    runs_by_objective, loss_at = {}, {}  # for the downstream forecast: each objective's runs and predicted loss

    for name, o in analysis.objectives.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)
        fits, allocs, df = o.fits, o.allocs, o.df
        rec = recommendations.get(name) if isinstance(recommendations.get(name), dict) else None
        runs_by_objective[name] = df
        loss_at[name] = rec["allocation"].loss if rec is not None else (allocs[3].loss if 3 in allocs else None)
        summary += _summary(o, at, rec)
        figs: list[tuple[str, Path]] = []
        pool = _adaptive_pool(adaptive, name, o.runs)
        if 2 in fits:
            figs.append(("IsoFLOP profiles", plots.plot_isoflop(fits[2], out / f"{slug}_isoflop", pool=pool)[0]))
        if 1 in fits:
            figs.append(("Loss against compute and the envelope", plots.plot_frontier(fits[1], out / f"{slug}_frontier")[0]))
        if fits:
            figs.append(("Compute-optimal N and D", plots.plot_allocation(list(fits.values()), out / f"{slug}_allocation")[0]))
        if 3 in fits:
            figs.append(("Parametric fit", plots.plot_contours(fits[3], out / f"{slug}_contours", pool=pool)[0]))
            figs.append(("Residuals of the parametric fit", plots.plot_residuals(fits[3], out / f"{slug}_residuals")[0]))
        results_json = {}
        for k, fr in o.results.items():
            d = fr.to_dict()
            d.pop("columns")
            d["allocation"] = allocs[k].to_dict()
            results_json[f"approach_{k}"] = d
        store = {"n_runs": int(len(df)), "fits": results_json,
                 "not_fitted": {f"approach_{k}": v for k, v in o.skipped.items()}}
        report_json["objectives"][name] = store
        if name in recommendations:
            store["recommendation"] = (_recommendation_json(rec, o) if rec is not None
                                       else {"not_made": str(recommendations[name])})
            body.append(_section(o, at, figs, out, _recommendation_section(name, rec, recommendations[name], at, o)))
        else:
            body.append(_section(o, at, figs, out, ""))
        body.append(_extrapolation_section(results_json))
        body.append(_conventions_section(o, at, max_tokens, store))
        body.append(_data_constrained_section(o, at, store, summary))
        body.append(_families_section(o, at, max_tokens, out, slug, store, summary))

    for sweep in adaptive or []:
        summary.append(path_sentence(sweep))
        body.append(adaptive_section(sweep, out, "".join(ch if ch.isalnum() else "_" for ch in sweep.name)))
        report_json.setdefault("adaptive", {})[sweep.name] = path_json(sweep)

    compute = compute_used(analysis.df_all)
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
    analysis.fits_json = json.loads(json.dumps(report_json, allow_nan=False, default=_json_default))
    return index


def _adaptive_pool(adaptive: list[AdaptiveSweep] | None, objective: str, runs: pd.DataFrame) -> pd.DataFrame | None:
    """The candidates of the (first) adaptive sweep of `objective`, with the chosen runs' losses: what the
    objective's figures mark (plots.mark_pool)."""
    sweep = next((s for s in adaptive or [] if s.objective == objective), None)
    if sweep is None:
        return None
    if "run_id" not in runs.columns:
        return sweep.pool
    return sweep.pool.drop(columns=["loss"], errors="ignore").merge(runs[["run_id", "loss"]], on="run_id", how="left")


def _recommendation_json(rec: dict, o: ObjectiveFits | None = None) -> dict:
    """What fits.json records of a recommendation (scaling/plan/recommend.py): the same objects the CLI prints, and
    N_opt at the budget across the law families (`families_n_opt`, None without them)."""
    law = rec["fit"]
    shape = rec["shape"]
    mix = getattr(o, "families_n_opt", None)
    return {"families_n_opt": None if mix is None else mix.to_dict(),
            "law": getattr(getattr(law, "fit", law), "law", "chinchilla"), "n_points": getattr(law, "n_points", None),
            "compute_convention": rec.get("compute_convention"), "param_count": rec.get("param_count"),
            "allocation": rec["allocation"].to_dict(),
            "shape": {"d_model": shape.d_model, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
                      "d_ff": shape.d_ff},
            "params": float(rec["n"]), "tokens": float(rec["tokens"]), "band": [float(v) for v in rec["band"]],
            "notes": list(rec.get("notes", [])), "at_bound": [b.to_dict() for b in at_bound(law)]}


def _recommendation_section(name: str, rec: dict | None, why, at: float, o: ObjectiveFits | None = None) -> str:
    if rec is None:
        return (f"<h3>Recommendation at {at:.3g} FLOPs</h3><div class='warn'>not made: "
                f"{html.escape(str(why))}</div>")
    a, law, shape = rec["allocation"], rec["fit"], rec["shape"]
    m = marks(at_bound(law))
    caveat = ""
    exp = next((m[k] for k in ("alpha", "beta") if k in m and m[k].where == "estimate"), None)
    if exp is not None:
        caveat = f" <span class='bound'>not determined: {html.escape(short(exp, 'a'))}</span>"
    rows = [("N_opt (parameters)", a.n_opt), ("D_opt (tokens)", a.d_opt)]
    if a.epochs is not None:
        rows.append((f"epochs over {_g(a.max_tokens)} unique tokens", a.epochs))
    rows += [("tokens per parameter", a.tokens_per_param)] + ([("predicted loss", a.loss)] if a.loss else [])
    mix = getattr(o, "families_n_opt", None)
    if mix is not None:
        rows.append(("N_opt across the law families (weighted by their error on held-out costlier runs)", mix))
    h = [f"<h3>Recommendation at {at:.3g} FLOPs</h3>",
         f"<p>From {html.escape(_law_words(law))} fitted to {getattr(law, 'n_points', '?')} points, "
         f"{html.escape(_flops_words(rec))}; N counts {html.escape(str(rec.get('param_count')).replace('_', '-'))} "
         f"parameters. These are the numbers <code>medscale optimal</code> and the demo print.{caveat}</p>",
         "<table><tr><th>quantity</th><th>estimate [95% interval]</th></tr>"]
    h += [f"<tr><td>{html.escape(k)}</td><td>{_est(v)}</td></tr>" for k, v in rows]
    h.append("</table>")
    lo, hi = rec["band"]
    h.append(f"<p>Shape: d_model {shape.d_model}, {shape.n_layers} layers, {shape.n_heads} heads, d_ff {shape.d_ff} "
             f"({_g(rec['n'])} parameters), trained on {_g(rec['tokens'])} tokens (its own N at the budget); sizes "
             f"within 1% of the best predicted loss: {_g(lo)} to {_g(hi)}.</p>")
    h += [f"<p>{html.escape(n)}</p>" for n in list(a.notes) + list(rec.get("notes", []))]
    items = _bound_items(_law_words(law), law)
    warns = list(a.warnings) + ([] if mix is None else [w for w in mix.warnings if "disagree" in w])
    if items or warns:
        h.append("<div class='warn'><ul>" + "".join(items)
                 + "".join(f"<li>{html.escape(w)}</li>" for w in warns) + "</ul></div>")
    return "\n".join(h)


def compute_used(df: pd.DataFrame) -> dict:
    """FLOPs the finished runs trained, and what the same runs would have cost each trained from scratch (as
    under cosine). A WSD branch (scaling/sweep/wsd.py) trains only from the step it forked at (`forked_at_step`;
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


def _conventions_section(o: ObjectiveFits, at: float, max_tokens, store: dict) -> str:
    """The Approach 3 recommendation under each parameter and compute convention, side by side: one fit per
    parameter convention (the Approach 3 fit above where its N is that convention's), two FLOP counts each."""
    if not o.conventions:
        return ""
    rows, out = [], {}
    for pc, fr in o.conventions.items():
        if isinstance(fr, str):
            rows.append(f"<tr><td>{pc}</td><td colspan='5'>{html.escape(fr)}</td></tr>")
            continue
        col = PARAMS_COLUMNS[pc]
        which = ("the Approach 3 fit above" if fr is o.results.get(3)
                 else f"Approach 3 fitted to N = {col}")
        for cc in ("full", "6nd"):
            fpt = o.fpt_by_column.get(col) if cc == "full" else None
            if cc == "full" and fpt is None:
                continue
            try:
                a = compute_optimal(fr.fit, at, max_tokens=max_tokens, flops_per_token=fpt)
            except AnalysisError as e:
                rows.append(f"<tr><td>{pc}</td><td>{cc}</td><td colspan='4'>{html.escape(str(e))}</td></tr>")
                continue
            out[f"{pc}/{cc}"] = {"N": a.n_opt.to_dict(), "D": a.d_opt.to_dict(),
                                 "loss": None if a.loss is None else a.loss.to_dict(),
                                 "fit": "approach_3" if fr is o.results.get(3) else f"approach_3 on {col}",
                                 "at_bound": [b.to_dict() for b in at_bound(fr)]}
            flag = "".join(f" <span class='bound'>{html.escape(b.parameter)} {html.escape(b.label)}</span>"
                           for b in at_bound(fr) if b.where == "estimate")
            rows.append(f"<tr><td>{pc.replace('_', '-')}</td><td>{cc}</td><td>{_est(a.n_opt)}</td>"
                        f"<td>{_est(a.d_opt)}</td><td>{_est(a.loss)}</td><td>{html.escape(which)}{flag}</td></tr>")
    if not rows:
        return ""
    store["conventions"] = out
    return (f"<h3>The recommendation under each convention at {at:.3g} FLOPs</h3>"
            "<p>N counted with or without embeddings and the head; the budget spent on 6N FLOPs per token or on the "
            "full count (attention and head included). medscale recommends total parameters and the full count "
            "(docs/SCIENCE.md): at small sizes the head and attention are much of the compute, and 6N with "
            "non-embedding N misplaces the optimum.</p><table><tr><th>N counts</th><th>compute</th><th>N_opt</th>"
            "<th>D_opt</th><th>predicted loss</th><th>fit</th></tr>" + "".join(rows) + "</table>")


def _data_constrained_section(o: ObjectiveFits, at: float, store: dict, summary: list[str]) -> str:
    """The data-constrained law when runs record their unique tokens and some repeat their data."""
    if o.dc_error is not None:
        return f"<h3>Data-constrained law</h3><div class='warn'>not fitted: {html.escape(o.dc_error)}</div>"
    if o.data_constrained is None:
        return ""
    from .summary import _plain_tree

    fr, name = o.data_constrained, o.name
    fit, U, al, free, ex = fr.fit, o.dc_tokens, o.dc_alloc, o.dc_free, fr.hold_out
    items = at_bound(fr)
    m = marks(items)
    warns = list(fit.warnings_) + al.warnings
    store["data_constrained"] = {**{k: e.to_dict() for k, e in fit.estimates_.items()},
                                 "n_points": fr.n_points, "allocation": al.to_dict(), "unlimited": free.to_dict(),
                                 "extrapolation": _plain_tree(ex), "warnings": warns,
                                 "at_bound": [b.to_dict() for b in items]}
    r = fit.estimates_["R_star_D"]
    rm = m.get("R_star_D")
    summary.append(
        f"{name}: repeated tokens lose value with R*_D = {_g(r.value)} epochs"
        + (f" (interval {_g(r.low)} to {_g(r.high)})" if np.isfinite(r.low) else "")
        + (f" ({rm.label}: {rm.meaning})" if rm is not None and rm.where == "estimate" else "")
        + f"; with {U:.3g} unique tokens at {at:.3g} FLOPs ({_flops_words({'compute_convention': al.compute_convention})}), "
        f"train {_g(al.n_opt.value)} parameters for {al.epochs.value:.2g} epochs (unlimited data would suggest "
        f"{_g(free.n_opt.value)}).")
    h = ["<h3>Data-constrained law (Muennighoff et al. 2023)</h3>",
         f"<p>L = E + A/N^alpha + B/D'^beta with D' = U + U R*_D (1 - exp(-(D/U - 1)/R*_D)): a repeated token is "
         f"worth less than a fresh one. Fitted to {fr.n_points} points, every run of this objective (a "
         "data-constrained arm included).</p><table><tr><th>quantity</th><th>estimate [95% interval]</th></tr>"]
    h += [f"<tr><td>{k}</td><td>{_est(fit.estimates_[k], m.get(k), k)}</td></tr>"
          for k in ("R_star_D", "R_star_N", "E", "alpha", "beta", "a", "b") if k in fit.estimates_]
    h.append("</table>")
    h.append(f"<p>At {at:.3g} FLOPs ({html.escape(_flops_words({'compute_convention': al.compute_convention}))}) "
             f"with {U:.3g} unique tokens: N = {_est(al.n_opt)}, D = {_est(al.d_opt)}, epochs = {_est(al.epochs)}, "
             f"predicted loss {_est(al.loss)}; with unlimited data N = {_est(free.n_opt)}.</p>")
    h += [f"<p>{html.escape(n)}</p>" for n in al.notes]
    if ex:
        what = f"budget {_g(ex.get('budget'))}" if ex.get("budget") else f"N {_g(ex.get('params'))}"
        h.append(f"<p>Extrapolation (refitted without the largest {what}): its best run's loss predicted "
                 f"{ex['loss']['predicted']:.4f}, observed {ex['loss']['observed']:.4f} "
                 f"(difference {ex['loss']['difference']:+.4f}; mean absolute {ex['loss']['mean_abs_difference']:.4f})."
                 + (f" N_opt predicted / observed: {_g(ex['n_opt']['ratio'])}." if ex.get("n_opt") else "")
                 + "</p>")
    bound_items = _bound_items("data-constrained law", fr)
    if warns or bound_items:
        h.append("<div class='warn'><ul>" + "".join(bound_items)
                 + "".join(f"<li>{html.escape(w)}</li>" for w in warns) + "</ul></div>")
    return "\n".join(h)


def families_json(o: ObjectiveFits, at: float, max_tokens=None) -> dict:
    """What fits.json records of the law families: the choice (validation, weights, chosen family, each family's
    fit) and the mixture's N_opt at the budget, in the FLOP count and with the unique tokens it was made for."""
    if o.families is None:
        return {"not_fitted": o.families_error} if o.families_error else {}
    return {**o.families.to_dict(), "n_opt": o.families_n_opt.to_dict(), "budget": at,
            "compute_convention": "full" if o.fpt is not None else "6nd",
            "unique_tokens": max_tokens if o.data_constrained is not None else None}


def _families_summary(o: ObjectiveFits, at: float) -> str:
    ch, mix = o.families, o.families_n_opt
    s = ch.summary
    errs = "" if s is None else " (" + ", ".join(f"{r.family} {r.mape:.2f}%" for r in s.itertuples()) + ")"
    return (f"{o.name}: of the law families, {ch.chosen} extrapolated best to held-out costlier runs{errs}; "
            f"weighted by that error, the families put N_opt at {at:.3g} FLOPs at {_g(mix.value)} parameters "
            f"(interval {_g(mix.low)} to {_g(mix.high)})."
            + "".join(f" Warning: {w}" for w in mix.warnings if "disagree" in w))


def _families_table(o: ObjectiveFits) -> list[str]:
    ch, mix = o.families, o.families_n_opt
    v = ch.validation
    cuts = [] if v is None else sorted(v["cut"].unique())
    h = ["<table><tr><th>family</th><th>parameters</th>"
         + "".join(f"<th>error, top {c:.0%} held out</th>" for c in cuts)
         + "<th>mean error</th><th>R^2 held out</th><th>weight</th><th>N_opt [95% interval]</th></tr>"]
    for k, fam in ch.families.items():
        cells = [f"{r.mape:.2f}%" if np.isfinite(r.mape) else "not fitted" for r in
                 v[v["family"] == k].sort_values("cut").itertuples()] if v is not None else []
        row = None if ch.summary is None else ch.summary.set_index("family").loc[k]
        mean = "" if row is None else f"{row['mape']:.2f}%"
        r2 = "" if row is None else _g(row["r2"])
        name = f"<b>{html.escape(k)} (chosen)</b>" if k == ch.chosen else html.escape(k)
        h.append(f"<tr><td>{name}</td><td>{fam.n_params}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                 + f"<td>{mean}</td><td>{r2}</td><td>{ch.weights.get(k, 0):.2f}</td>"
                 f"<td>{_est(mix.per_family.get(k))}</td></tr>")
    h.append("<tr><td><b>mixture</b></td><td></td>" + "<td></td>" * len(cuts)
             + f"<td></td><td></td><td>1</td><td><b>{_est(mix)}</b></td></tr></table>")
    return h


def _families_section(o: ObjectiveFits, at: float, max_tokens, out: Path, slug: str, store: dict,
                      summary: list[str]) -> str:
    """Which law to trust: the families' validation on held-out costlier runs, their weights, the chosen family,
    N_opt at the budget across them (with the disagreement warning), and the families' figure."""
    store["families"] = families_json(o, at, max_tokens)
    if o.families is None:
        return ("" if o.families_error is None else "<h3>Law families</h3><div class='warn'>not fitted: "
                f"{html.escape(o.families_error)}</div>")
    ch, mix, j = o.families, o.families_n_opt, store["families"]
    summary.append(_families_summary(o, at))
    fig = family_plots.plot_families(ch, out / f"{slug}_families", budget=at)[0]
    rel = fig.relative_to(out).as_posix()
    h = ["<h3>Which law to trust: law families chosen by how they extrapolate</h3>",
         f"<p>Each family is fitted to the runs below a compute cut and scored on the costlier runs above it "
         f"(mean absolute % error of the loss); weights ~ 1/error^2; the chosen family has the lowest error (ties "
         f"within 5% go to fewer parameters). Fitted to {ch.families[ch.chosen].n_points_} points.</p>"]
    h += _families_table(o)
    h.append(f"<p>N_opt at {at:.3g} FLOPs ({html.escape(_flops_words(j))}"
             + (f", {_g(j['unique_tokens'])} unique tokens" if j["unique_tokens"] else "")
             + f"): {_est(mix)} across the families; the interval is the mixture of the families' bootstrap N_opt "
             "draws, each family in proportion to its weight: parameter uncertainty and the disagreement between "
             "families, not an error every family shares beyond the runs.</p>")
    warns = list(ch.warnings) + list(mix.warnings)
    if warns:
        h.append("<div class='warn'><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warns) + "</ul></div>")
    h.append(f"<figure><img src='{html.escape(rel)}' alt='law families'><figcaption>Law families: each family's "
             "prediction of the held-out costlier runs (left) and beyond the runs (right), the chosen family marked "
             f"(<a href='{html.escape(Path(rel).with_suffix('.svg').as_posix())}'>SVG</a>)</figcaption></figure>")
    return "\n".join(h)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(type(o))


def _section(o: ObjectiveFits, at, figs, out, recommendation: str) -> str:
    name, df, fits, skipped, allocs = o.name, o.df, o.fits, o.skipped, o.allocs
    h = [f"<h2>{html.escape(name)} <small>({len(df)} runs)</small></h2>"]
    if fits:
        keys = sorted(fits)
        names = []
        for k in keys:
            names += [n for n in fits[k].estimates_ if n not in names]
        flags = {k: marks(at_bound(fits[k])) for k in keys}
        h.append("<h3>Fits (95% bootstrap intervals)</h3><table><tr><th>quantity</th>"
                 + "".join(f"<th>{plots.NAMES[k]}</th>" for k in keys) + "</tr>")
        for n in names:
            h.append(f"<tr><td>{html.escape(n)}</td>"
                     + "".join(f"<td>{_est(fits[k].estimates_.get(n), flags[k].get(n), n)}</td>" for k in keys)
                     + "</tr>")
        h.append("<tr><td>points used</td>" + "".join(f"<td>{fits[k].n_points_}</td>" for k in keys) + "</tr></table>")
        items = [li for k in keys for li in _bound_items(plots.NAMES[k], fits[k])]
        if items:
            h.append("<h3>Parameters at a bound</h3><p>The optimiser stopped at the edge of the range it was given: "
                     "these values are limits, not measurements.</p><div class='warn'><ul>" + "".join(items)
                     + "</ul></div>")
        h.append(recommendation)
        h.append(f"<h3>Compute-optimal allocation at {at:.3g} FLOPs by each approach (C = 6ND)</h3><table><tr>"
                 "<th>approach</th><th>N_opt</th><th>D_opt (tokens)</th><th>tokens per parameter</th>"
                 "<th>predicted loss</th></tr>")
        for k in keys:
            al = allocs[k]
            h.append(f"<tr><td>{plots.NAMES[k]}</td><td>{_est(al.n_opt)}</td><td>{_est(al.d_opt)}</td>"
                     f"<td>{_est(al.tokens_per_param)}</td><td>{_est(al.loss) if al.loss else 'n/a'}</td></tr>")
        h.append("</table>")
        notes = sorted({n for k in keys for n in allocs[k].notes})
        h += [f"<p>{html.escape(n)}</p>" for n in notes]
    else:
        h.append(recommendation)
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
