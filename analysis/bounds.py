"""Which fitted parameters sit at the bound their optimisation was confined to, and what that means.

A parameter at its bound was not measured by the runs: the optimiser stopped where the box let it, so the
number is a limit (or an artefact of the box) and whatever is derived from it is not determined either. This
module names those parameters for any fit that has bounds (ParametricFit, DataConstrainedFit, OffsetPowerLaw,
SaturationFit), reading the bounds from the fit modules' own constants (lse_huber.BOUND_*,
data_constrained.BOUND_LOG_R_STAR for R*_D and R*_N, saturation.GAMMA_BOUNDS and each saturation fit's m_inf `bounds`), so
that every place a value is shown (the CLI, fits.json, the report) can say so beside it.

    for b in at_bound(fit):
        print(b.parameter, b.label, b.meaning)

A point estimate at a bound is `where="estimate"`; an interval that reaches a bound (some resamples ended
there) while the estimate does not is `where="interval"`. IsoFLOP and envelope fits have no bounded
parameters: the list is empty. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data_constrained import BOUND_LOG_R_STAR
from .lse_huber import BOUND_EXPONENT, BOUND_LOG_OFFSET
from .saturation import GAMMA_BOUNDS

# The fits' own diagnostics call a parameter "at its bound" within 1e-3 of it in the optimiser's coordinates
# (log E, log R*_D, the exponents themselves); the same tolerance here, so the flags and warnings agree.
TOL = 1e-3
TOL_LEVEL = 1e-6  # m_inf, in the metric's units (relative to max(1, |bound|))
TOL_LOG_GAMMA = 0.01  # gamma, in log (saturation.py flags gamma within 1% of its lower bound)

# Quantities computed from the exponents: not determined when an exponent is not.
DERIVED_FROM_EXPONENTS = ("a", "b", "G")


@dataclass(frozen=True)
class AtBound:
    parameter: str
    value: float        # the point estimate (where="estimate") or the interval's end (where="interval")
    bound: float        # the bound, in the parameter's own units
    side: str           # "lower" or "upper"
    where: str          # "estimate" or "interval"
    meaning: str        # one line: what it means for the fit

    @property
    def label(self) -> str:
        """A few words to put beside the value: 'at its lower bound (~0)', 'interval reaches its upper bound 5'."""
        b = "~0" if self.bound != 0 and abs(self.bound) < 1e-6 else f"{self.bound:.3g}"
        if self.where == "estimate":
            return f"at its {self.side} bound ({b})"
        return f"interval reaches its {self.side} bound ({b})"

    def to_dict(self) -> dict:
        return {"parameter": self.parameter, "value": _num(self.value), "bound": _num(self.bound), "side": self.side,
                "where": self.where, "label": self.label, "meaning": self.meaning}


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _meaning(name: str, side: str, where: str, bound: float, fit) -> str:
    est = where == "estimate"
    if name == "E":
        if side == "lower":
            return ("the irreducible loss is not identified by these runs; E is a lower limit, not a measurement"
                    if est else "these runs do not rule out a loss with no irreducible term: the interval's lower "
                    "end is the bound (~0), not a measurement")
        return ("the fit put the loss in its irreducible term; the power terms, the exponents and the allocation "
                "are not determined" if est else "some resamples put the loss in its irreducible term: the "
                "interval's upper end is the bound, not a measurement")
    if name in ("alpha", "beta"):
        what = "N" if name == "alpha" else "D"
        if est:
            return (f"the law is not determined by these runs: {name} stopped at the edge of its range "
                    f"[{BOUND_EXPONENT[0]:g}, {BOUND_EXPONENT[1]:g}], so the loss's fall with {what} and everything "
                    "derived from it (a, b, G, N_opt, D_opt) are not measured")
        return (f"some resamples put {name} at the edge of its range: the interval's {side} end is the bound, not a "
                "measurement, and the law is weakly determined")
    if name == "R_star_D":
        if side == "lower":
            return ("repeated tokens look worthless in these runs; R*_D is an upper limit, not a measurement" if est
                    else "some resamples find repeated tokens worthless: the interval's lower end is the bound")
        return ("repeated tokens look as good as new in these runs; R*_D is a lower limit, not a measurement" if est
                else "some resamples find repeated tokens as good as new: the interval's upper end is the bound")
    if name == "R_star_N":
        if side == "lower":
            return ("parameters beyond the data's compute-optimal size look worthless in these runs; R*_N is an upper "
                    "limit, not a measurement" if est else "some resamples find excess parameters worthless: the "
                    "interval's lower end is the bound")
        return ("parameters beyond the data's compute-optimal size look as good as the first in these runs (no "
                "model outgrew its data); R*_N is a lower limit, not a measurement" if est else "some resamples "
                "find excess parameters as good as the first: the interval's upper end is the bound")
    if name == "m_inf":
        ceiling_side = (side == "upper") == (getattr(fit, "sign", 1.0) > 0)
        if ceiling_side:
            return ("the task has not saturated within the sizes tried: the curve does not bend before the bound "
                    f"{bound:.3g} (the metric's limit or the known ceiling), so the bound, not the data, sets where "
                    "it levels off; m_inf is a limit, not a measurement" if est else
                    "some resamples have not saturated within the sizes tried: the interval's end is the bound "
                    f"{bound:.3g} (the metric's limit or the known ceiling), not a measurement")
        return (f"the curve's level sits at the metric's other limit {bound:.3g}: the bound, not the data, sets it"
                if est else f"some resamples sit at the metric's other limit {bound:.3g}: the interval's end is the bound")
    if name == "gamma":
        if side == "lower":
            return ("the curve is close to a straight line in log size: where it levels off is not determined by the "
                    "sizes tried" if est else "some resamples are straight lines in log size: the saturation size's "
                    "interval is open-ended")
        return ("the curve bends at once, flat after the smallest sizes: its shape is not determined" if est else
                "some resamples are flat after the smallest sizes: the interval's upper end is the bound")
    return "the optimiser stopped at the bound: the value is not determined by the data"


def _specs(fit) -> list[tuple[str, float, float, str]]:
    """(name, low, high, scale) per bounded parameter, bounds in the parameter's own units; scale 'log' when
    the optimiser worked on its logarithm."""
    params = getattr(fit, "params_", None)
    if not isinstance(params, dict):
        return []
    if "m_inf" in params and hasattr(fit, "bounds"):  # saturation.SaturationFit
        lo, hi = fit.bounds
        return [("m_inf", float(lo), float(hi), "level"), ("gamma", *GAMMA_BOUNDS, "log_gamma")]
    specs = []
    if "E" in params:
        specs.append(("E", float(np.exp(BOUND_LOG_OFFSET[0])), float(np.exp(BOUND_LOG_OFFSET[1])), "log"))
    for name in ("alpha", "beta"):
        if name in params:
            specs.append((name, *map(float, BOUND_EXPONENT), "linear"))
    r_lo, r_hi = float(np.exp(BOUND_LOG_R_STAR[0])), float(np.exp(BOUND_LOG_R_STAR[1]))
    if "R_star_D" in params:
        specs.append(("R_star_D", r_lo, r_hi, "log"))
    if "R_star_N" in params and getattr(fit, "excess_params", True):  # without the term R*_N is pinned, not fitted
        specs.append(("R_star_N", r_lo, r_hi, "log"))
    return specs


def _near(value: float, bound: float, scale: str) -> bool:
    if not (np.isfinite(value) and np.isfinite(bound)):
        return False
    if scale == "log":
        return value > 0 and abs(np.log(value) - np.log(bound)) <= TOL
    if scale == "log_gamma":
        return value > 0 and abs(np.log(value) - np.log(bound)) <= TOL_LOG_GAMMA
    if scale == "level":
        return abs(value - bound) <= TOL_LEVEL * max(1.0, abs(bound))
    return abs(value - bound) <= TOL


def at_bound(fit) -> list[AtBound]:
    """The parameters of `fit` (or of a summary.FitResult's fit) whose estimate is at an optimisation bound, then
    those whose interval reaches one; each with the bound, the side and a one-line meaning."""
    inner = getattr(fit, "fit", None)
    if inner is not None and not callable(inner):  # a summary.FitResult: its fitted object (a fit's .fit is a method)
        fit = inner
    params = getattr(fit, "params_", None) or {}
    estimates = getattr(fit, "estimates_", None) or {}
    found, reaches = [], []
    for name, lo, hi, scale in _specs(fit):
        value = float(params.get(name, np.nan))
        hit = None
        for side, bound in (("lower", lo), ("upper", hi)):
            if _near(value, bound, scale):
                hit = side
                found.append(AtBound(name, value, bound, side, "estimate", _meaning(name, side, "estimate", bound, fit)))
                break
        e = estimates.get(name)
        if e is None:
            continue
        for side, bound, end in (("lower", lo, e.low), ("upper", hi, e.high)):
            if side != hit and _near(float(end), bound, scale):
                reaches.append(AtBound(name, float(end), bound, side, "interval",
                                       _meaning(name, side, "interval", bound, fit)))
    return found + reaches


def marks(items: list[AtBound]) -> dict[str, AtBound]:
    """Parameter name -> the flag to show beside its value: its own (an estimate at a bound before an interval
    reaching one), and for a, b and G the first exponent whose estimate is at a bound."""
    out: dict[str, AtBound] = {}
    for b in items:
        if b.parameter not in out:
            out[b.parameter] = b
    exponent = next((b for b in items if b.parameter in ("alpha", "beta") and b.where == "estimate"), None)
    if exponent is not None:
        for name in DERIVED_FROM_EXPONENTS:
            out.setdefault(name, exponent)
    return out


def short(b: AtBound, name: str | None = None) -> str:
    """The words beside a value: its own label, or for a derived quantity which parameter it inherits from."""
    if name is not None and name != b.parameter:
        return f"from {b.parameter}, {b.label}"
    return b.label
