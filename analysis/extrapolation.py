"""The headline reliability figure: fit on everything but the largest budget, predict the largest.

A scaling law is bought to extrapolate, so its error where it extrapolates is the error a scientist pays. For
IsoFLOP sweeps the largest budget is held out: the law fitted to the smaller budgets predicts the held-out
budget's N_opt (compared with the minimum of a parabola through its runs: a ratio) and its loss (compared with
its best run: a difference, predicted minus observed). Ladder sweeps (no budgets) hold out the largest N and
report the loss difference on its runs. On noise-free data from the fitted law the predictions are exact.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import AnalysisError
from .isoflop import _minimum, _parabolas

def observed_n_opt(params, loss) -> tuple[float, bool]:
    """(N at the minimum of a parabola in log N through all the held-out budget's sizes, inside the sizes?).

    All sizes, as Approach 2 does: on 9 sizes with 1% loss noise the minimum scatters by a factor 1.10 (3 sizes
    nearest the best: 1.49), at a bias of about 1% from the parabola's shape.
    """
    xs, ys = np.log(np.asarray(params, float)), np.asarray(loss, float)
    if np.unique(xs).size < 3:
        return float("nan"), False
    coef = _parabolas(xs, ys, np.ones((1, xs.size)))
    xm, _ = _minimum(coef, xs.mean())
    inside = bool(np.isfinite(xm[0]) and xs.min() < xm[0] < xs.max())
    return float(np.exp(xm[0])), inside


def hold_out_largest(data: pd.DataFrame, refit, *, n_opt_of=None) -> dict | None:
    """Refit without the largest budget (or, with no budgets, the largest N) and score the prediction.

    `data` has params, tokens, loss (and budget, unique_tokens when known); `refit(train_frame)` returns a fitted
    object with `predict(N, D[, U])` and, for budgets, `n_opt(C)`. None when too little is left to fit.
    """
    has_budget = "budget" in data and np.isfinite(data["budget"].astype(float)).sum() > 0
    if has_budget:
        b = data["budget"].astype(float).to_numpy()
        budgets = np.unique(b[np.isfinite(b)])
        if budgets.size < 3:
            return None
        top = budgets[-1]
        test = b == top
        out = {"held_out": "largest budget", "budget": float(top)}
    else:
        sizes = np.unique(data["params"])
        if sizes.size < 4:
            return None
        test = (data["params"] == sizes[-1]).to_numpy()
        out = {"held_out": "largest N", "params": float(sizes[-1])}
    train = data[~test]
    held = data[test]
    try:
        fit = refit(train)
    except AnalysisError:
        return None
    args = [held["params"], held["tokens"]] + ([held["unique_tokens"]] if "unique_tokens" in held else [])
    pred = np.asarray(fit.predict(*args), dtype=float)
    obs = held["loss"].to_numpy(dtype=float)
    best = int(np.argmin(obs))
    out.update({"n_fit_points": int(len(train)), "n_held_out": int(len(held)),
                "loss": {"predicted": float(pred[best]), "observed": float(obs[best]),
                         "difference": float(pred[best] - obs[best]),
                         "mean_abs_difference": float(np.mean(np.abs(pred - obs)))}})
    if has_budget:
        fresh = held if "unique_tokens" not in held else held[held["tokens"] <= held["unique_tokens"] * (1 + 1e-9)]
        n_obs, inside = observed_n_opt(fresh["params"], fresh["loss"]) if len(fresh) else (float("nan"), False)
        n_pred = float(np.asarray(n_opt_of(fit, out["budget"]) if n_opt_of else fit.n_opt(out["budget"])).ravel()[0])
        out["n_opt"] = {"predicted": n_pred, "observed": n_obs,
                        "ratio": n_pred / n_obs if np.isfinite(n_obs) else None,
                        "observed_inside_sizes": inside}
    return out


def isoflop_hold_out(fit) -> dict | None:
    """Approach 2: the N_opt law of the smaller budgets' minima against the largest budget's own minimum."""
    from .allocation import loglinear

    m = fit.minima_[fit.minima_["convex"]].sort_values("budget")
    if len(m) < 3:
        return None
    train, top = m.iloc[:-1], m.iloc[-1]
    ok = train["in_law"].to_numpy() if "in_law" in train else np.ones(len(train), bool)
    if ok.sum() < 2:
        return None
    w = train["weight"].to_numpy()[ok] if "weight" in train else None
    a, lk = loglinear(np.log(train["budget"].to_numpy()[ok]), np.log(train["n_opt"].to_numpy()[ok]), w)
    pred = float(np.exp(lk + a * np.log(top["budget"])))
    return {"held_out": "largest budget", "budget": float(top["budget"]), "n_fit_points": int(ok.sum()),
            "n_opt": {"predicted": pred, "observed": float(top["n_opt"]), "ratio": pred / float(top["n_opt"]),
                      "observed_inside_sizes": not bool(top["edge"])},
            "loss": None}


# How far a recommendation may reach past the runs before it carries a warning: decades of compute past the
# largest run; N and D each grow about as C^0.5, so each gets half of it. Chinchilla's own recommendation sat 2.3
# decades past its largest IsoFLOP budget (3e21 -> 5.76e23 FLOPs); beyond 3 the exponents are untested guesses.
REACH_LIMIT_DECADES = 3.0


def fitted_extent(fit, flops_per_token=None) -> dict | None:
    """The largest compute, N and D among the runs a fit was made from (compute in the allocation's FLOP count:
    `flops_per_token(N)` x D when given, else 6ND, or the compute the runs were grouped by); None if unknown."""
    from .conventions import compute_6nd, tokens_for_compute

    data = getattr(fit, "data_", None)
    if data is None:
        data = getattr(fit, "curves_", None)
    if data is None or "params" not in data or not ({"tokens", "compute"} & set(data.columns)):
        return None
    N = data["params"].to_numpy(float)
    if "tokens" in data:
        D = data["tokens"].to_numpy(float)
        C = np.asarray(flops_per_token(N), float) * D if flops_per_token is not None else compute_6nd(N, D)
    else:
        C = data["compute"].to_numpy(float)
        D = tokens_for_compute(C, N)
    return {"compute": float(C.max()), "params": float(N.max()), "tokens": float(D.max())}


def beyond_data(fit, budget: float, n_opt: float, d_opt: float, flops_per_token=None) -> dict | None:
    """How far an allocation (N, D at `budget`) reaches past the fitted runs, in decades (log10 of the ratio to
    the largest run's compute, N and D; <= 0 is inside the runs), whether that passes REACH_LIMIT_DECADES, and
    the run that would bring it within the limit (the budget / 10^limit: N and D each / 10^(limit / 2))."""
    top = fitted_extent(fit, flops_per_token)
    if top is None:
        return None
    out = {"largest_run_compute": top["compute"], "largest_params": top["params"], "largest_tokens": top["tokens"],
           "compute_decades": float(np.log10(budget / top["compute"])),
           "params_decades": float(np.log10(n_opt / top["params"])),
           "tokens_decades": float(np.log10(d_opt / top["tokens"])),
           "limit_decades": REACH_LIMIT_DECADES}
    half = REACH_LIMIT_DECADES / 2
    out["beyond_limit"] = bool(out["compute_decades"] > REACH_LIMIT_DECADES or out["params_decades"] > half
                               or out["tokens_decades"] > half)
    step = 10 ** half
    out["next_run"] = {"compute": budget / step**2, "params": n_opt / step, "tokens": d_opt / step}
    return out


def _decades(x: float) -> str:
    return f"{x:.1f} decades past" if x >= 0.05 else "at" if x > -0.05 else "within"


def reach_words(reach: dict) -> tuple[str, str | None]:
    """(the note every allocation carries about how far it extrapolates, the warning when past the limit)."""
    note = (f"past the runs: the budget is {_decades(reach['compute_decades'])} the largest run's compute "
            f"({reach['largest_run_compute']:.3g} FLOPs); N_opt is {_decades(reach['params_decades'])} the largest N "
            f"fitted ({reach['largest_params']:.3g}), D_opt {_decades(reach['tokens_decades'])} the largest D "
            f"({reach['largest_tokens']:.3g})")
    if not reach["beyond_limit"]:
        return note, None
    nxt, limit = reach["next_run"], reach["limit_decades"]
    warning = (f"this recommendation extrapolates {reach['compute_decades']:.1f} decades of compute past the largest "
               f"run (N {reach['params_decades']:+.1f}, D {reach['tokens_decades']:+.1f} decades), beyond the "
               f"{limit:g} decades of compute (and {limit / 2:g} of N or D) a fitted law is trusted for; its interval "
               f"covers only the scatter of these runs, not the error of extrapolating. To close the gap, train runs "
               f"up to about N = {nxt['params']:.3g} params on D = {nxt['tokens']:.3g} tokens (C = "
               f"{nxt['compute']:.3g} FLOPs) and refit, or ask for a budget within {limit:g} decades of the largest "
               f"run (up to {reach['largest_run_compute'] * 10 ** limit:.3g} FLOPs)")
    return note, warning
