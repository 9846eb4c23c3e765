"""The report's downstream sections, per objective (decoders, encoders): what a scientist acts on.

Per task: the measured numbers; the bounded saturation curve with its interval and the verdict (flat, saturates
at N, or still gaining at the largest size, with its probability) next to LightGBM and the ceiling; the paired
differences between consecutive sizes; the two-step forecast (loss -> metric) for the recommended model and its
validation on the held-out largest model; zero-shot AUROC against the number of rollouts K with the censored
fraction and the rollout budget; and the subgroup curves (sex, age band) with whether the gap narrows or widens.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from . import bounds, plots
from .bootstrap import Estimate
from .downstream_data import DownstreamData, as_downstream_data
from .downstream_plots import plot_subgroups
from .errors import AnalysisError
from .saturation import fit_saturation, one_run_per_size
from .subgroups import subgroup_scaling
from .task_forecast import loss_law_without, normal_draws, task_forecasts

FORECAST_MODES = ("probe", "finetune")


def _g(x) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    x = float(x)
    if np.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _iv(v, lo, hi, fmt="{:.3f}") -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    s = fmt.format(v)
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        s += f" <small>[{fmt.format(lo)}, {fmt.format(hi)}]</small>"
    return s


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN and infinities as None."""
    f = frame.replace([np.inf, -np.inf], np.nan)
    return f.astype(object).where(f.notna(), None).to_dict("records")


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
    return h + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def _measured_table(downstream: pd.DataFrame, metric: str = "auroc", max_rows: int = 80) -> str:
    """The measured numbers themselves, whether or not a saturation curve can be fitted to them."""
    d = downstream[downstream["metric"] == metric] if "metric" in downstream.columns else downstream.iloc[:0]
    if d.empty:
        return ""
    d = d.sort_values(["task", "mode", "params"], na_position="first").head(max_rows)
    has_gap = "gap" in d.columns
    rows = []
    for r in d.itertuples():
        n = "" if pd.isna(r.params) else _g(r.params)
        gap = [f"{r.gap:+.3f}" if has_gap and pd.notna(r.gap) else ""] if has_gap else []
        rows.append([html.escape(str(r.task)), html.escape(str(r.mode)), n, _iv(r.value, r.low, r.high)] + gap)
    return "<details><summary>Every measured result</summary>" + _table(
        ["task", "mode", "N", f"{metric} [interval]"] + (["gap to ceiling"] if has_gap else []), rows) + "</details>"


def by_objective(downstream: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """Decoders and encoders saturate separately; size-independent baselines (no objective) go with each."""
    if "objective" not in downstream.columns or downstream["objective"].dropna().nunique() <= 1:
        return [(None, downstream)]
    shared = downstream[downstream["objective"].isna()]
    return [(str(obj), pd.concat([g, shared], ignore_index=True))
            for obj, g in downstream.dropna(subset=["objective"]).groupby("objective")]


def downstream_sections(downstream, out: Path, *, n_boot: int, seed: int, report_json: dict, summary: list[str],
                        runs_by_objective: dict | None = None, loss_at: dict | None = None) -> list[str]:
    """HTML sections (one per objective). `runs_by_objective`: the finished runs of each objective (params,
    tokens, loss), for the forecast; `loss_at`: the predicted loss (Estimate) of each objective's recommended
    model."""
    data = as_downstream_data(downstream)
    body = []
    for label, group in by_objective(data.results):
        ids = set(group["run_id"]) if "run_id" in group else set()
        part = DownstreamData(
            results=group,
            draws=None if data.draws is None else data.draws[data.draws["run_id"].isin(ids)],
            subgroups=None if data.subgroups is None or "run_id" not in data.subgroups
            else data.subgroups[data.subgroups["run_id"].isin(ids)])
        objs = group["objective"].dropna().unique() if "objective" in group else []
        key = label if label is not None else (str(objs[0]) if len(objs) == 1
                                               else next(iter(runs_by_objective or {}), None))
        body.append(_objective_section(part, out, n_boot, seed, report_json, summary, label,
                                       (runs_by_objective or {}).get(key), (loss_at or {}).get(key)))
    return body


def _objective_section(data: DownstreamData, out: Path, n_boot, seed, report_json, summary, label,
                       runs: pd.DataFrame | None, loss_at: Estimate | None) -> str:
    downstream = data.results
    title = f" ({html.escape(label)} models)" if label else ""
    h = [f"<h2>Downstream tasks{title}</h2>", _measured_table(downstream)]
    slot = report_json.setdefault("downstream", {}).setdefault(label or "all", {})
    try:
        by_n = fit_saturation(downstream, n_boot=n_boot, seed=seed, draws=data.draws)
    except AnalysisError as e:
        h.append(f"<div class='warn'>Saturation not fitted: {html.escape(str(e))}</div>")
        by_n = None
    if by_n is not None:
        if label:
            report_json.setdefault("saturation_by_objective", {})[label] = by_n.to_dict()
        else:
            report_json["saturation"] = by_n.to_dict()
        h += _saturation_html(by_n, downstream, out, seed, summary, label, slot)
    h += _forecast_html(data, runs, loss_at, n_boot, seed, slot, summary, label)
    h += _zero_shot_html(downstream, slot)
    h += _subgroup_html(data.subgroups, out, slot, label)
    return "\n".join(x for x in h if x)


def _m_inf_flag(fit, bound: float) -> str:
    """Beside m_inf: its bound, and in words when the estimate or its interval sits there (analysis/bounds.py)."""
    flag = bounds.marks(bounds.at_bound(fit)).get("m_inf") if fit is not None else None
    if flag is None:
        return f" <small>(bound {_g(bound)})</small>"
    return f" <small><b>{html.escape(flag.label)}</b>: {html.escape(flag.meaning)}</small>"


def _saturation_html(by_n, downstream, out, seed, summary, label, slot) -> list[str]:
    h = []
    try:
        by_c = fit_saturation(downstream, x="compute", n_boot=0, seed=seed)
        by_c = by_c if by_c.fits else None   # e.g. every model from one IsoFLOP budget: no compute axis
    except AnalysisError:
        by_c = None
    rank = by_n.ranking()
    base = by_n.baselines
    h.append(
        f"<h3>Does a bigger model pay? ({html.escape(by_n.metric)})</h3><p>Curve: metric = m_inf - k N^-gamma, with "
        "m_inf held inside the metric's range and below the task's ceiling (the true probability's metric). The "
        f"saturation size is where doubling N gains less than {by_n.threshold:g}; one run per size: {by_n.rule}. "
        "Intervals refit the curve on each paired bootstrap draw (every size scored on the same resampled test "
        "subjects) where the draws are available.</p>")
    rows = []
    for r in rank.itertuples():
        if r.status == "still gaining":
            verdict = f"<b>still gaining</b> at the largest size (P = {r.p_gaining:.2f})"
        elif r.status == "flat":
            verdict = f"<b>flat</b> from the smallest size (P = {r.p_flat:.2f})"
        else:
            verdict = f"saturates (P still gaining {r.p_gaining:.2f})"
        lgb = base[(base["task"] == r.task) & (base["mode"] == "lightgbm")]["value"]
        ceil = base[(base["task"] == r.task) & (base["mode"] == "ceiling")]["value"]
        rows.append([html.escape(str(r.task)), html.escape(r.mode), verdict,
                     f"{_g(r.saturation)} <small>[{_g(r.low)}, {_g(r.high)}]</small>", f"{r.gain_at_largest:+.4f}",
                     _iv(r.m_inf, r.m_inf_low, r.m_inf_high) + _m_inf_flag(by_n.fits.get((r.task, r.mode)), r.bound),
                     f"{lgb.mean():.3f}" if len(lgb) else "n/a", f"{ceil.mean():.3f}" if len(ceil) else "n/a",
                     html.escape(r.noise.split(" (")[0])])
    h.append(_table(["task", "curve", "verdict", "saturation size N [interval]", "gain per doubling at largest",
                     "m_inf [interval]", "LightGBM", "ceiling", "intervals from"], rows))
    slot["ranking"] = by_n.to_dict()["ranking"]
    if len(rank):
        gaining = [r.task for r in rank.itertuples() if r.status == "still gaining"]
        flat = [r.task for r in rank.itertuples() if r.status == "flat"]
        who = f" ({label}s)" if label else ""
        parts = []
        if gaining:
            parts.append(f"still gaining at the largest size: {', '.join(gaining)}")
        if flat:
            parts.append(f"flat already at the smallest: {', '.join(flat)}")
        sat = [f"{r.task} at about {_g(r.saturation)}" for r in rank.itertuples() if r.status == "saturates"]
        if sat:
            parts.append("saturating: " + ", ".join(sat))
        summary.append(f"Downstream{who}: " + "; ".join(parts) + ".")
    diffs_html, diffs_json = [], {}
    for task in by_n.tasks:
        mode = by_n.primary_mode(task)
        if mode is None:
            continue
        d = by_n.differences(task, mode)
        diffs_json[task] = _records(d)
        for r in d.itertuples():
            diffs_html.append([html.escape(str(task)), html.escape(mode), f"{_g(r._1)} → {_g(r.to)}",
                               _iv(r.difference, r.low, r.high, "{:+.3f}"),
                               "n/a" if not np.isfinite(r.p_better) else f"{r.p_better:.2f}",
                               f"[{r.unpaired_low:+.3f}, {r.unpaired_high:+.3f}]"])
    if diffs_html:
        h.append("<h3>Paired differences between consecutive sizes</h3><p>The later size minus the earlier on the "
                 "same resampled test subjects; P: the share of draws in which the larger model is better. The last "
                 "column is the interval the two points' own intervals would give if they were independent.</p>")
        h.append(_table(["task", "curve", "sizes", "difference [paired interval]", "P(larger better)",
                         "unpaired interval"], diffs_html))
    slot["differences"] = diffs_json
    if by_n.warnings:
        h.append("<div class='warn'><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in by_n.warnings)
                 + "</ul></div>")
    for task in by_n.tasks:
        slug = "".join(ch if ch.isalnum() else "_" for ch in (f"{label}_{task}" if label else str(task)))
        png = plots.plot_saturation(by_n, task, out / f"saturation_{slug}", by_compute=by_c)[0]
        rel = png.relative_to(out).as_posix()
        h.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(str(task))}'>"
                 f"<figcaption>{html.escape(str(task))}</figcaption></figure>")
    return h


def _forecast_html(data: DownstreamData, runs, loss_at, n_boot, seed, slot, summary, label) -> list[str]:
    if runs is None or "loss" not in runs or "run_id" not in data.results:
        return []
    d = data.results[data.results["mode"].isin(FORECAST_MODES) & (data.results["metric"] == "auroc")]
    if d.empty:
        return []
    sized = one_run_per_size(d.drop_duplicates("run_id").dropna(subset=["params"]), "params")
    if sized.empty:
        return []
    largest = sized.loc[sized["params"].astype(float).idxmax(), "run_id"]
    holdout = loss_law_without(runs, largest, n_boot=min(n_boot, 50), seed=seed)
    at_draws = normal_draws(loss_at, max(n_boot, 1), seed) if loss_at is not None else None
    table = task_forecasts(data.results, runs[["run_id", "loss"]], modes=FORECAST_MODES, draws=data.draws,
                           at_loss=loss_at, at_loss_draws=at_draws, holdout_loss=holdout, n_boot=n_boot, seed=seed)
    if table.empty:
        return []
    slot["forecast"] = _records(table)
    h = ["<h3>Two-step forecast: pretraining loss → task metric</h3><p>Per task, AUROC = 0.5 + (top - 0.5) / "
         "(1 + exp(s (L - L0))) against each run's pretraining loss L (top at most the ceiling); the recommended "
         "model's metric is read at the loss the fitted law predicts for it"
         + (f" (L = {_g(loss_at.value)} [{_g(loss_at.low)}, {_g(loss_at.high)}])" if loss_at is not None else "")
         + ". Validation: the largest model is held out of both steps (the loss law refitted without it"
         + ("" if holdout else ": not possible with these runs, so its observed loss is used") + ").</p>"]
    rows = []
    for r in table.to_dict("records"):
        if r.get("note"):
            rows.append([html.escape(str(r["task"])), html.escape(r["mode"]), html.escape(r["note"])] + [""] * 4)
            continue
        rows.append([html.escape(str(r["task"])), html.escape(r["mode"]),
                     _iv(r.get("forecast", np.nan), r.get("forecast_low"), r.get("forecast_high")),
                     _iv(r["holdout_forecast"], r["holdout_low"], r["holdout_high"]),
                     _iv(r["holdout_actual"], r["holdout_actual_low"], r["holdout_actual_high"]),
                     "yes" if r["holdout_within"] else ("no" if r["holdout_within"] is not None else "n/a"),
                     _iv(r["top"], r["top_low"], r["top_high"])])
    h.append(_table(["task", "curve", "forecast for the recommended model", "forecast for the held-out largest",
                     "held-out largest measured", "within interval", "top [interval]"], rows))
    ok = table.dropna(subset=["forecast"]) if "forecast" in table else table.iloc[:0]
    if len(ok):
        who = f" ({label}s)" if label else ""
        summary.append(f"Forecast for the recommended model{who}: " + ", ".join(
            f"{r.task} {r.mode} AUROC {r.forecast:.3f} [{r.forecast_low:.3f}, {r.forecast_high:.3f}]"
            for r in ok.itertuples()) + ".")
    return h


def _zero_shot_html(downstream: pd.DataFrame, slot) -> list[str]:
    z = downstream[downstream["mode"] == "zero_shot"]
    if z.empty:
        return []
    wide = z.pivot_table(index=["task", "run_id", "params"], columns="metric", values="value", aggfunc="mean")
    ks = sorted(int(c.split("_k")[1]) for c in wide.columns if str(c).startswith("auroc_k"))
    rows, js = [], []
    for (task, rid, n), r in wide.sort_index().iterrows():
        cells = [html.escape(str(task)), _g(n)] + [f"{r.get(f'auroc_k{k}', np.nan):.3f}" for k in ks]
        cells += [f"{r.get('censored', np.nan):.1%}", _g(r.get("rollout_tokens")), _g(r.get("rollout_cap")),
                  "yes" if r.get("rollout_capped", 0) > 0 else "no"]
        rows.append(cells)
        js.append({"task": task, "run_id": rid, "params": float(n), **{k: (None if pd.isna(v) else float(v))
                                                                       for k, v in r.items()}})
    slot["zero_shot"] = js
    return ["<h3>Zero-shot: AUROC against the number of rollouts K</h3><p>Each test sample's future is sampled K "
            "times until its label window closes (budget: window length × the train split's tokens per day × a "
            "margin, at most the cap); the risk is the share of trajectories with the outcome. Censored: "
            "trajectories still open when the budget ran out.</p>",
            _table(["task", "N"] + [f"AUROC K={k}" for k in ks] + ["censored", "rollout tokens", "cap",
                                                                   "cap bit"], rows)]


def _subgroup_html(subgroups: pd.DataFrame | None, out: Path, slot, label) -> list[str]:
    if subgroups is None or subgroups.empty:
        return []
    trend = subgroup_scaling(subgroups)
    slot["subgroups"] = _records(trend)
    h = ["<h3>Subgroups: does scale close the gap?</h3><p>Per task, the gap between the best and the worst group "
         "(by sex, by age band) against log2 N: its change per doubling with an interval; narrows or widens only "
         "when the interval excludes zero.</p>"]
    if len(trend):
        h.append(_table(["task", "curve", "by", "best / worst", "sizes", "gap at smallest", "gap at largest",
                         "change per doubling [interval]", "verdict"],
                        [[html.escape(str(r.task)), html.escape(r.mode), html.escape(r.kind),
                          f"{html.escape(str(r.best))} / {html.escape(str(r.worst))}", str(r.n_sizes),
                          f"{r.gap_smallest:+.3f}", f"{r.gap_largest:+.3f}",
                          _iv(r.slope_per_doubling, r.low, r.high, "{:+.4f}"), r.verdict]
                         for r in trend.itertuples()]))
    for task in sorted(subgroups["task"].unique()):
        slug = "".join(ch if ch.isalnum() else "_" for ch in (f"{label}_{task}" if label else str(task)))
        got = plot_subgroups(subgroups, task, out / f"subgroups_{slug}")
        if got:
            rel = got[0].relative_to(out).as_posix()
            h.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(str(task))} subgroups'>"
                     f"<figcaption>{html.escape(str(task))}: by subgroup</figcaption></figure>")
    return h
