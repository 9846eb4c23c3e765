"""The compute-optimal allocation law every approach ends in: N_opt = k_N C^a, D_opt = k_D C^b.

Approaches 1 and 2 fit it by least squares in log-log space; Approach 3 derives it in closed form. Each
carries its bootstrap draws, so any allocation or exponent gets an interval the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bootstrap import DEFAULT_LEVEL, Estimate, estimate


def loglinear(x: np.ndarray, y: np.ndarray, weights=None) -> tuple[float, float]:
    """(slope, intercept) of the (weighted) least-squares line y = slope x + intercept."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    sxx = (w * (x - xm) ** 2).sum()
    if x.size < 2 or sxx <= 0:
        return float("nan"), float("nan")
    slope = (w * (x - xm) * (y - ym)).sum() / sxx
    return float(slope), float(ym - slope * xm)


@dataclass
class AllocationLaw:
    log_kn: float
    a: float
    log_kd: float
    b: float
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))  # rows: log_kn, a, log_kd, b
    level: float = DEFAULT_LEVEL

    @classmethod
    def from_optima(cls, compute, n_opt, d_opt, draws=None, level=DEFAULT_LEVEL, weights=None) -> "AllocationLaw":
        lc = np.log(compute)
        a, lkn = loglinear(lc, np.log(n_opt), weights)
        b, lkd = loglinear(lc, np.log(d_opt), weights)
        return cls(lkn, a, lkd, b, np.empty((0, 4)) if draws is None else np.asarray(draws), level)

    def n_opt(self, compute) -> np.ndarray:
        return np.exp(self.log_kn + self.a * np.log(compute))

    def d_opt(self, compute) -> np.ndarray:
        return np.exp(self.log_kd + self.b * np.log(compute))

    def n_opt_draws(self, compute) -> np.ndarray:
        """(n_boot, len(compute)) bootstrap draws of N_opt."""
        lc = np.log(np.atleast_1d(np.asarray(compute, dtype=float)))
        return np.exp(self.draws[:, [0]] + self.draws[:, [1]] * lc)

    def d_opt_draws(self, compute) -> np.ndarray:
        lc = np.log(np.atleast_1d(np.asarray(compute, dtype=float)))
        return np.exp(self.draws[:, [2]] + self.draws[:, [3]] * lc)

    @property
    def estimates(self) -> dict[str, Estimate]:
        d = self.draws
        return {
            "a": estimate(self.a, d[:, 1] if len(d) else None, self.level),
            "b": estimate(self.b, d[:, 3] if len(d) else None, self.level),
            "k_N": estimate(np.exp(self.log_kn), np.exp(d[:, 0]) if len(d) else None, self.level),
            "k_D": estimate(np.exp(self.log_kd), np.exp(d[:, 2]) if len(d) else None, self.level),
        }
