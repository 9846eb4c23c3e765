"""Compute-optimal allocation at a budget, optionally with a cap on the tokens available.

Unconstrained, N_opt and D_opt come from a fit's allocation law (closed form for Approach 3). With a token
cap the optimum moves along the line 6ND = C: loss along that line has a single minimum (for L(N, D) of
Approach 3 and for an IsoFLOP parabola alike), so when the unconstrained D_opt exceeds the cap the
constrained optimum is D = cap, N = C / (6 cap): a larger model on all the data there is. Every quantity is
also computed for each bootstrap draw of the fit, which gives its interval.
"""
from __future__ import annotations

from .conventions import params_for_compute, tokens_for_compute
from dataclasses import dataclass, field, replace

import numpy as np

from .bootstrap import Estimate, estimate
from .errors import AnalysisError
from .extrapolation import beyond_data, reach_words


@dataclass(frozen=True)
class Allocation:
    budget: float
    n_opt: Estimate
    d_opt: Estimate
    tokens_per_param: Estimate
    loss: Estimate | None
    token_limited: bool
    max_tokens: float | None
    notes: list[str] = field(default_factory=list)
    epochs: Estimate | None = None  # passes over the unique tokens (data-constrained law only)
    warnings: list[str] = field(default_factory=list)
    compute_convention: str = "6nd"
    beyond_data: dict | None = None  # how far N, D and the budget reach past the fitted runs (extrapolation.py)

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "n_opt": self.n_opt.to_dict(),
            "d_opt": self.d_opt.to_dict(),
            "tokens_per_param": self.tokens_per_param.to_dict(),
            "loss": None if self.loss is None else self.loss.to_dict(),
            "token_limited": self.token_limited,
            "max_tokens": self.max_tokens,
            "notes": list(self.notes),
            "epochs": None if self.epochs is None else self.epochs.to_dict(),
            "warnings": list(self.warnings),
            "compute_convention": self.compute_convention,
            "beyond_data": None if self.beyond_data is None else dict(self.beyond_data),
        }


def compute_optimal(fit, budget: float, *, max_tokens: float | None = None, max_epochs: float = 1.0,
                    flops_per_token=None) -> Allocation:
    """N_opt, D_opt, tokens per parameter (and predicted loss for Approach 3) at compute `budget` (FLOPs).

    `fit` is any fitted EnvelopeFit, IsoFlopFit, ParametricFit or DataConstrainedFit. `max_tokens` is the
    number of unique tokens available. With a DataConstrainedFit the allocation chooses how many epochs to
    repeat them (the law prices repeats); with the others `max_epochs` > 1 allows that many passes, each
    repeated token counted as if it were new (optimistic beyond a few epochs). `flops_per_token(N)` (e.g.
    `full_flops_per_token` of the runs) spends the budget on the full FLOP count instead of 6N; Approach 3 only.
    `beyond_data` says how far the budget, N and D reach past the fitted runs (a note always; a warning past
    extrapolation.REACH_LIMIT_DECADES, saying what to run to close the gap).
    """
    if not hasattr(fit, "allocation_"):
        raise AnalysisError("compute_optimal needs a fitted EnvelopeFit, IsoFlopFit or ParametricFit")
    if not np.isfinite(budget) or budget <= 0:
        raise AnalysisError(f"budget must be a positive number of FLOPs; got {budget!r}")
    return _with_reach(_allocate(fit, budget, max_tokens, max_epochs, flops_per_token), fit, flops_per_token)


def _with_reach(a: Allocation, fit, flops_per_token) -> Allocation:
    """The allocation with how far it reaches past the runs: a note always, a warning past the limit."""
    reach = beyond_data(fit, a.budget, a.n_opt.value, a.d_opt.value, flops_per_token)
    if reach is None:
        return a
    note, warning = reach_words(reach)
    return replace(a, beyond_data=reach, notes=list(a.notes) + [note],
                   warnings=list(a.warnings) + ([warning] if warning else []))


def _allocate(fit, budget, max_tokens, max_epochs, flops_per_token) -> Allocation:
    if hasattr(fit, "allocate") and max_tokens is not None:
        return _from_repeats(fit.allocate(budget, max_tokens, flops_per_token=flops_per_token), flops_per_token)
    if flops_per_token is not None:
        if not hasattr(fit, "params_"):
            raise AnalysisError("the full FLOP convention needs a parametric fit (Approach 3): Approaches 1 and 2 "
                                "only know the compute their runs were grouped by")
        return _on_line(fit, budget, max_tokens, max_epochs, flops_per_token)
    law = fit.allocation_
    level = law.level
    n0, d0 = float(law.n_opt(budget)), float(law.d_opt(budget))
    # D_opt = C/(6 N_opt) holds exactly for Approaches 2 and 3; for Approach 1's separately fitted laws, use it
    # so the allocation spends exactly the budget.
    d0 = tokens_for_compute(budget, n0)
    nd = law.n_opt_draws(budget)[:, 0]
    dd = tokens_for_compute(budget, nd)
    notes: list[str] = []
    cap = None
    limited = False
    if max_tokens is not None:
        if not np.isfinite(max_tokens) or max_tokens <= 0:
            raise AnalysisError(f"the unique tokens available must be a positive number; got {max_tokens!r}")
        if max_epochs < 1:
            raise AnalysisError(f"max_epochs must be >= 1; got {max_epochs!r}")
        cap = float(max_tokens) * float(max_epochs)
        limited = d0 > cap
        if limited:
            notes.append(
                f"token-limited: the compute-optimal D would be {d0:.3g} tokens but only {cap:.3g} are available; "
                f"the budget goes to a larger model (N = C / (6 D_cap)), which reaches a higher loss than an "
                "unconstrained allocation"
            )
            if max_epochs > 1:
                notes.append(
                    f"D includes up to {max_epochs:g} passes over {max_tokens:.3g} unique tokens; the fit treats "
                    "repeated tokens as new, which is a fair approximation up to about 4 epochs (Muennighoff et "
                    "al. 2023) and optimistic beyond"
                )
            else:
                notes.append(
                    "repeating the data for a few epochs (up to about 4 loses little; Muennighoff et al. 2023) "
                    "would allow a smaller model; the data-constrained law prices repeats: fit it to runs that record "
                    "their unique tokens (medscale fit --unique-tokens COL; in a sweep, dataset.train_fraction below 1)"
                )
        d0 = min(d0, cap)
        n0 = params_for_compute(budget, d0)
        dd = np.minimum(dd, cap)
        nd = params_for_compute(budget, dd)
    loss = None
    if hasattr(fit, "predict_draws") and hasattr(fit, "boot_thetas_"):
        pred = float(fit.predict(n0, d0))
        draws = fit.predict_draws(nd, dd, paired=True) if len(nd) else None
        loss = estimate(pred, draws, level)
    return Allocation(
        budget=float(budget),
        n_opt=estimate(n0, nd if len(nd) else None, level),
        d_opt=estimate(d0, dd if len(dd) else None, level),
        tokens_per_param=estimate(d0 / n0, (dd / nd) if len(nd) else None, level),
        loss=loss,
        token_limited=bool(limited),
        max_tokens=cap,
        notes=notes,
    )


def _from_repeats(r, fpt) -> Allocation:
    tpp = Estimate(r.d_opt.value / r.n_opt.value)
    return Allocation(budget=r.budget, n_opt=r.n_opt, d_opt=r.d_opt, tokens_per_param=tpp, loss=r.loss,
                      token_limited=r.epochs.value > 1, max_tokens=r.unique_tokens, notes=list(r.notes),
                      epochs=r.epochs, warnings=list(r.warnings), compute_convention="6nd" if fpt is None else "full")


def _on_line(fit, budget, max_tokens, max_epochs, fpt) -> Allocation:
    """Approach 3 with the budget spent on fpt(N) FLOPs per token: minimise L(N, C / fpt(N)) numerically."""
    from .data_constrained import _argmin_on_line, _solve_n

    level = fit.allocation_.level
    n_free = float(fit.allocation_.n_opt(budget))
    lo, hi = n_free / 1e4, n_free * 1e4
    point = {k: np.atleast_1d(v) for k, v in fit.params_.items()}
    draws = fit.param_draws()
    cap = None if max_tokens is None else float(max_tokens) * float(max_epochs)

    def solve(p):
        n = _argmin_on_line(p, budget, np.inf, fpt, lo, hi)
        if cap is not None:
            d = budget / fpt(n)
            n = np.where(d > cap, [_solve_n(budget, cap, fpt, lo, hi)] * n.size, n)
        return n

    n0 = float(solve(point)[0])
    d0 = float(budget / fpt(n0))
    nd = solve(draws) if draws is not None else np.empty(0)
    dd = budget / fpt(nd) if nd.size else np.empty(0)
    notes = ["the budget is spent on the full FLOP count (attention and output head included), not 6N"]
    limited = cap is not None and d0 >= cap * (1 - 1e-9)
    if limited:
        notes.append(f"token-limited: D capped at {cap:.3g} tokens; the budget goes to a larger model")
    pred = float(fit.predict(n0, d0))
    ld = fit.predict_draws(nd, dd, paired=True) if nd.size else None
    return Allocation(budget=float(budget), n_opt=estimate(n0, nd if nd.size else None, level),
                      d_opt=estimate(d0, dd if nd.size else None, level),
                      tokens_per_param=estimate(d0 / n0, (dd / nd) if nd.size else None, level),
                      loss=estimate(pred, ld, level), token_limited=bool(limited), max_tokens=cap, notes=notes,
                      compute_convention="full")
