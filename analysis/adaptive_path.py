"""The path of an adaptive sweep (issue 32), for the report: what each decision chose, the compute spent, and how
the target's interval narrowed, against what the full grid of candidates would have cost.

The inputs are plain data: the decision records an adaptive sweep writes (`<store>/adaptive/<sweep>/decision-NNNN
.json`, read by scaling/sweep/adaptive.py `History`; JSON dicts here) and the full grid's cost. `path_frame` and
`pool_marks` turn them into tables; `plot_width_path` draws one; `adaptive_section` is the report's HTML.

Decision k's fit was made on the runs of decisions 0..k-1 (it chose decision k's runs): its interval is what the
compute spent before decision k bought, so the path plots width against `spent_before`.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import FORMATS, _figure, _save

PATH_COLUMNS = ["batch", "kind", "runs", "cost", "spent_before", "spent_after", "fit_runs", "point", "low", "high",
                "width", "pool_flops"]


@dataclass
class AdaptiveSweep:
    """One adaptive sweep as the report shows it."""
    name: str
    objective: str
    target: str  # in words, e.g. "N_opt at C = 1e+13 FLOPs"
    path: pd.DataFrame  # path_frame: one row per decision
    pool: pd.DataFrame  # pool_marks: every candidate, with the decision that chose it (NaN: never chosen)
    pool_flops: float  # the full grid's cost (under WSD: trunks whole, branches their cooldown)
    budget: float | None  # grid.budget of the last decision (None where not recorded)
    stopped: str | None = None  # why the last decision stopped; None while the sweep goes on


def path_frame(decisions: list[dict], pool_flops: float) -> pd.DataFrame:
    """One row per recorded decision (PATH_COLUMNS): its batch index and kind, the runs it chose and their cost,
    the compute spent before and after it, and the target (first planned run, or N_opt) with its 95% interval and
    mean relative width from the fit the decision used (NaN for the initial design, which had no fit)."""
    rows = []
    for d in decisions:
        fit = d.get("fit") or {}
        t = fit.get("target") or {}
        first = lambda key: float(t[key][0]) if t.get(key) else np.nan  # noqa: E731
        rows.append({"batch": int(d["batch"]), "kind": str(d["kind"]), "runs": len(d.get("chosen") or []),
                     "cost": float(d.get("cost") or 0.0), "spent_before": float(d.get("spent_before") or 0.0),
                     "spent_after": float(d["spent_after"]), "fit_runs": fit.get("runs", np.nan),
                     "point": first("point"), "low": first("low"), "high": first("high"),
                     "width": float(t["width"]) if "width" in t else np.nan, "pool_flops": float(pool_flops)})
    return pd.DataFrame(rows, columns=PATH_COLUMNS)


def pool_marks(candidates: pd.DataFrame, decisions: list[dict]) -> pd.DataFrame:
    """Every candidate (`candidates`: run_id, params, tokens[, ...]) with `batch`, the decision that chose it (NaN:
    never chosen), and `order`, its place among the chosen runs (1, 2, ...)."""
    chosen = [(c["run_id"], int(d["batch"])) for d in decisions for c in d.get("chosen") or []]
    by_id = {rid: (batch, i + 1) for i, (rid, batch) in enumerate(chosen)}
    out = candidates.reset_index(drop=True).copy()
    out["batch"] = [by_id.get(r, (np.nan, np.nan))[0] for r in out["run_id"]]
    out["order"] = [by_id.get(r, (np.nan, np.nan))[1] for r in out["run_id"]]
    return out


def candidates_of(decisions: list[dict]) -> pd.DataFrame:
    """The pool as the records hold it: the initial decision lists every candidate (run_id, params, tokens, cost
    from scratch)."""
    first = next((d for d in decisions if d.get("kind") == "initial"), decisions[0] if decisions else {})
    return pd.DataFrame(first.get("candidates") or [], columns=["run_id", "params", "tokens", "cost"])[
        ["run_id", "params", "tokens", "cost"]]


def plot_width_path(path: pd.DataFrame, out, *, target: str = "the target", formats=FORMATS) -> list[Path]:
    """`width_path_figure`, written as PNG and SVG next to `out`."""
    return _save(width_path_figure(path, target=target), out, formats)


def width_path_figure(path: pd.DataFrame, *, target: str = "the target") -> Figure:
    """Left: the target's relative 95% interval width against the compute spent before each fit (log x), each
    point numbered by the decision whose fit it is; right: the target with its interval. The full grid's cost
    (`pool_flops`) is a dashed vertical line on both."""
    fig, (axw, axt) = _figure(2)
    p = path[np.isfinite(path["width"].to_numpy(float))]
    x = p["spent_before"].to_numpy(float)
    pool_flops = float(path["pool_flops"].iloc[0]) if len(path) else np.nan
    axw.plot(x, p["width"], color="#3070d0", marker="o", lw=1.4, ms=5)
    for xi, w, b in zip(x, p["width"], p["batch"]):
        axw.annotate(str(int(b)), (xi, w), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axt.errorbar(x, p["point"], yerr=np.clip([p["point"] - p["low"], p["high"] - p["point"]], 0, None),
                 fmt="o", color="#3070d0", ms=4, capsize=2, lw=1)
    for ax in (axw, axt):
        if np.isfinite(pool_flops):
            ax.axvline(pool_flops, color="black", ls="--", lw=1, label=f"full grid: {pool_flops:.3g} FLOPs")
        ax.set_xscale("log")
        ax.set_xlabel("compute spent before the fit (FLOPs)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    if len(p) and (p["point"] > 0).all():
        axt.set_yscale("log", nonpositive="clip")  # a lower limit at 0 runs to the axis
    axw.set_ylabel("relative width of the 95% interval")
    axw.set_title("The target's interval against compute")
    axt.set_ylabel(target)
    axt.set_title("The target with its 95% interval")
    axw.legend(fontsize=8)
    return fig


def _g(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _share(flops: float, pool_flops: float, digits: int = 0) -> str:
    return f"{flops / pool_flops:.{digits}%}" if pool_flops > 0 else "n/a"


def path_json(sweep: AdaptiveSweep) -> dict:
    """What fits.json records of an adaptive sweep."""
    spent = float(sweep.path["spent_after"].iloc[-1]) if len(sweep.path) else 0.0
    rows = sweep.path.astype(object).where(sweep.path.notna(), None).to_dict(orient="records")
    return {"objective": sweep.objective, "target": sweep.target, "pool_runs": int(len(sweep.pool)),
            "chosen_runs": int(sweep.pool["batch"].notna().sum()), "pool_flops": sweep.pool_flops,
            "budget": sweep.budget, "spent": spent, "stopped": sweep.stopped, "decisions": rows}


def path_sentence(sweep: AdaptiveSweep) -> str:
    """One sentence: what the full grid would have cost and what the sweep spent."""
    spent = float(sweep.path["spent_after"].iloc[-1]) if len(sweep.path) else 0.0
    chosen, pool = int(sweep.pool["batch"].notna().sum()), len(sweep.pool)
    last = sweep.path[np.isfinite(sweep.path["width"].to_numpy(float))]
    width = (f"; the width of the target's 95% interval is {last['width'].iloc[-1]:.0%} of its value"
             if len(last) else "")
    return (f"Adaptive sweep {sweep.name}: the full grid of {pool} candidate runs would have cost "
            f"{sweep.pool_flops:.3g} FLOPs; the sweep chose {chosen} of them and spent {spent:.3g} FLOPs "
            f"({_share(spent, sweep.pool_flops)} of the full grid){width}.")


def adaptive_section(sweep: AdaptiveSweep, out: Path, slug: str) -> str:
    """The report's section: the sentence, the decision table and the width-against-compute figure."""
    fig = plot_width_path(sweep.path, out / f"{slug}_adaptive_path", target=sweep.target)[0]
    rel = fig.relative_to(out).as_posix()
    state = f"Stopped: {sweep.stopped}." if sweep.stopped else "Not finished: rerunning the sweep continues it."
    h = [f"<h2>Adaptive sweep {html.escape(sweep.name)} <small>({html.escape(sweep.objective)})</small></h2>",
         f"<p>{html.escape(path_sentence(sweep))} {html.escape(state)}</p>",
         f"<p>Target: {html.escape(sweep.target)}; budget {_g(sweep.budget)} FLOPs. Each decision refits the law on "
         "the runs chosen before it and picks the next runs by the expected reduction of the target's interval per "
         "FLOP (docs/SCIENCE.md); the interval in a row is the one that fit gave, before the row's runs were "
         "trained. On the IsoFLOP and parametric figures of this objective, chosen runs carry the number of the "
         "decision that chose them; hollow circles are candidates never chosen.</p>",
         "<table><tr><th>decision</th><th>kind</th><th>runs chosen</th><th>FLOPs spent after</th>"
         "<th>share of the full grid</th><th>fit on runs</th><th>target [95% interval]</th>"
         "<th>relative width</th></tr>"]
    for r in sweep.path.itertuples():
        target = ("no fit yet" if not np.isfinite(r.point) else
                  f"{_g(r.point)} <small>[{_g(r.low)}, {_g(r.high)}]</small>")
        runs = "" if not np.isfinite(r.fit_runs) else str(int(r.fit_runs))
        width = "" if not np.isfinite(r.width) else f"{r.width:.3f}"
        h.append(f"<tr><td>{r.batch}</td><td>{html.escape(r.kind)}</td><td>{r.runs}</td><td>{_g(r.spent_after)}</td>"
                 f"<td>{_share(r.spent_after, sweep.pool_flops, 1)}</td><td>{runs}</td><td>{target}</td>"
                 f"<td>{width}</td></tr>")
    h.append("</table>")
    h.append(f"<figure><img src='{html.escape(rel)}' alt='adaptive sweep path'><figcaption>The target's relative "
             "interval width and the interval itself against the compute spent before each fit (numbers: the "
             "decision); dashed: the full grid's cost "
             f"(<a href='{html.escape(Path(rel).with_suffix('.svg').as_posix())}'>SVG</a>)</figcaption></figure>")
    return "\n".join(h)
