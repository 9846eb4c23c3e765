"""Single-variable laws with an irreducible term: L(x) = E + A x^-alpha for x = N, D or C.

Same estimator as Approach 3 with one power term: Huber on log L, summed, L-BFGS-B from a screened grid.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import diagnostics, lse_huber
from .bootstrap import DEFAULT_LEVEL, Estimate, estimate
from .errors import AnalysisError
from .inputs import best_per_point, need_points, positive
from .power_sum import fit_power_sum

PARAMS = ("E", "A", "alpha")


def _named(thetas: np.ndarray) -> dict[str, np.ndarray]:
    t = np.atleast_2d(thetas)
    return {"E": np.exp(t[:, 2]), "A": np.exp(t[:, 0]), "alpha": t[:, 1]}


class OffsetPowerLaw:
    """L = E + A x^-alpha. `fit(x, loss)`, `predict(x)`, `estimates_` with bootstrap intervals."""

    def __init__(
        self,
        variable: str = "x",
        *,
        delta: float = lse_huber.DEFAULT_DELTA,
        n_boot: int = 1000,
        level: float = DEFAULT_LEVEL,
        seed: int = 0,
        n_jobs: int | None = 1,
    ):
        self.variable = variable
        self.delta = delta
        self.n_boot = n_boot
        self.level = level
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(self, x, loss) -> "OffsetPowerLaw":
        x, L = positive(x, self.variable), positive(loss, "loss")
        if x.size != L.size:
            raise AnalysisError(f"{self.variable} and loss must have the same length")
        self.notes_: list[str] = []
        keep, n_multi = best_per_point([x], L)
        if n_multi:
            self.notes_.append(f"{n_multi} value(s) of {self.variable} had several runs; the lowest loss was kept")
        x, L = x[keep], L[keep]
        need_points(x.size, len(PARAMS) + 1, f"L({self.variable}) = E + A {self.variable}^-alpha (3 parameters)")
        if np.unique(x).size < len(PARAMS) + 1:
            raise AnalysisError(f"L({self.variable}) needs at least 4 distinct values of {self.variable}")
        res = fit_power_sum(
            np.log(x)[None], np.log(L), delta=self.delta, n_boot=self.n_boot, seed=self.seed, n_jobs=self.n_jobs
        )
        point = {k: float(v[0]) for k, v in _named(res.theta).items()}
        draws = _named(res.boot_thetas) if len(res.boot_thetas) else None
        self.theta_ = res.theta
        self.boot_thetas_ = res.boot_thetas
        self.params_ = point
        self.estimates_: dict[str, Estimate] = {
            k: estimate(point[k], None if draws is None else draws[k], self.level) for k in PARAMS
        }
        self.data_ = pd.DataFrame({self.variable: x, "loss": L})
        self.n_points_ = int(x.size)
        self.warnings_ = self._diagnose(res)
        return self

    def _diagnose(self, res) -> list[str]:
        w = []
        lo, hi = lse_huber.BOUND_EXPONENT
        if not lo + 1e-3 < res.theta[1] < hi - 1e-3:
            w.append(f"alpha of L({self.variable}) = {res.theta[1]:.3g} is at its bound [{lo}, {hi}]")
        if res.theta[2] <= lse_huber.BOUND_LOG_OFFSET[0] + 1e-3:
            w.append(f"E of L({self.variable}) went to ~0: the irreducible loss is not identified")
        w += diagnostics.wide_factors(self.estimates_, ("alpha",))
        w += diagnostics.failed_resamples(res.n_failed, self.n_boot)
        return w

    def predict(self, x) -> np.ndarray:
        p = self.params_
        return p["E"] + p["A"] * np.asarray(x, dtype=float) ** -p["alpha"]

    def predict_draws(self, x) -> np.ndarray:
        d = _named(self.boot_thetas_)
        x = np.atleast_1d(np.asarray(x, dtype=float))[None]
        return d["E"][:, None] + d["A"][:, None] * x ** -d["alpha"][:, None]
