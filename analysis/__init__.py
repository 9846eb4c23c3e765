"""Scaling-law fits, compute-optimal allocation, saturation, plots and reports.

Needs only numpy, scipy, pandas and matplotlib: no JAX, Flax or Ray, so results can be analysed on a laptop.

    from medscale.analysis import fit_table, compute_optimal
    res = fit_table(df, params="params", loss="loss", tokens="tokens", approach=3)
    print(res.to_json()); compute_optimal(res.fit, 1e21, max_tokens=5e10)

Plots (`analysis.plots`) and the HTML report (`analysis.report.write_report`) import matplotlib, so they are
loaded on first use.
"""
from .allocation import AllocationLaw
from .bootstrap import Estimate
from .data_constrained import DataConstrainedFit
from .envelope import EnvelopeFit
from .errors import AnalysisError
from .isoflop import IsoFlopFit
from .laws import OffsetPowerLaw
from .optimal import Allocation, compute_optimal
from .parametric import ParametricFit
from .saturation import SaturationFit, SaturationResult, fit_saturation
from .summary import FitResult, fit_table

__all__ = [
    "AllocationLaw",
    "Allocation",
    "AnalysisError",
    "DataConstrainedFit",
    "EnvelopeFit",
    "Estimate",
    "FitResult",
    "IsoFlopFit",
    "OffsetPowerLaw",
    "ParametricFit",
    "SaturationFit",
    "SaturationResult",
    "compute_optimal",
    "fit_saturation",
    "fit_table",
    "write_report",
]


def __getattr__(name):
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

# Law families and the choice between them (issue 31): analysis/families.py, analysis/selection.py
from .families import FAMILIES, LawFamily, make_family  # noqa: E402
from .selection import FamilyChoice, choose, fit_families, predict_planned  # noqa: E402

__all__ += ["FAMILIES", "FamilyChoice", "LawFamily", "choose", "fit_families", "make_family", "predict_planned"]
