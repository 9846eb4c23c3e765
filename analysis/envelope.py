"""Approach 1: the lower envelope of training curves over compute (Hoffmann et al. 2022, section 3.1).

Each run's held-out loss is interpolated in log C on a common log-spaced grid. At each grid value the run
with the lowest loss gives N_opt(C) (its size) and D_opt(C) = C / (6 N_opt). A grid value is used only when
the winning size is bracketed by a smaller and a larger run that also reached that compute: otherwise the
true optimum may lie outside the sizes trained. Power laws N_opt ~ C^a, D_opt ~ C^b are fitted to the used
points. The bootstrap resamples runs (a run drawn twice does not change an envelope, so this amounts to
leaving random runs out).

With one point per run (a final-results table, no curves) the envelope is the Pareto front: runs with a
lower loss than every run of less compute.
"""
from __future__ import annotations

from .conventions import tokens_for_compute
import numpy as np
import pandas as pd

from . import diagnostics
from .allocation import AllocationLaw, loglinear
from .bootstrap import DEFAULT_LEVEL, resample_weights
from .errors import AnalysisError
from .inputs import positive

GRID_POINTS = 64


class EnvelopeFit:
    """Approach 1. `fit(run_id, params, compute, loss)` on a long table of curves (or one point per run)."""

    approach = 1

    def __init__(self, *, grid_points: int = GRID_POINTS, n_boot: int = 1000, level: float = DEFAULT_LEVEL,
                 seed: int = 0):
        self.grid_points = grid_points
        self.n_boot = n_boot
        self.level = level
        self.seed = seed

    def fit(self, run_id, params, compute, loss) -> "EnvelopeFit":
        N, C, L = positive(params, "params"), positive(compute, "compute"), positive(loss, "loss")
        runs = pd.DataFrame({"run_id": np.asarray(run_id), "params": N, "compute": C, "loss": L})
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        sizes = runs.groupby("run_id", sort=True)["params"].agg(["first", "nunique"])
        if (sizes["nunique"] > 1).any():
            raise AnalysisError("each run must have one params value; some run_ids have several")
        if sizes.shape[0] < 3:
            raise AnalysisError(f"Approach 1 needs at least 3 runs; got {sizes.shape[0]}")
        self.curves_ = runs.sort_values(["run_id", "compute"]).reset_index(drop=True)
        self.run_params_ = sizes["first"].to_numpy()
        counts = runs.groupby("run_id").size()
        self.final_only_ = bool((counts == 1).all())
        if self.final_only_:
            self._fit_front()
        else:
            self._fit_curves()
        self.n_points_ = int(len(self.points_))
        self.estimates_ = self.allocation_.estimates
        self.warnings_ += diagnostics.wide_exponents(self.estimates_)
        return self

    # -- curves ----------------------------------------------------------------------------------------
    def _fit_curves(self):
        self.notes_.append(
            "envelope of interpolated training curves; intermediate checkpoints of a cosine schedule are worse "
            "than runs trained to that compute, which biases N_opt towards larger models"
        )
        c = self.curves_
        lo, hi = np.log(c.compute.min()), np.log(c.compute.max())
        grid = np.linspace(lo, hi, self.grid_points)
        ids = np.unique(c.run_id)
        M = np.full((ids.size, grid.size), np.nan)  # loss of run i at grid compute j, NaN outside its curve
        for i, rid in enumerate(ids):
            r = c[c.run_id == rid]
            lc = np.log(r.compute.to_numpy())
            inside = (grid >= lc.min()) & (grid <= lc.max())
            M[i, inside] = np.interp(grid[inside], lc, r.loss.to_numpy())
        self._M, self._grid = M, grid
        self.points_ = self._envelope(np.ones(ids.size, dtype=bool))
        if len(self.points_) < 2 or self.points_["params"].nunique() < 2:
            raise AnalysisError(
                "Approach 1 found fewer than 2 distinct compute-optimal sizes on the envelope; it needs curves "
                "from sizes that overlap in compute, with the optimum inside the sizes trained"
            )
        self.allocation_ = self._law(self.points_)
        rng = np.random.default_rng(self.seed)
        draws = []
        for w in resample_weights(ids.size, self.n_boot, rng):
            p = self._envelope(w > 0)
            draws.append(self._row(p) if len(p) >= 2 and p["params"].nunique() >= 2 else [np.nan] * 4)
        self._set_draws(np.array(draws).reshape(-1, 4))

    def _envelope(self, use: np.ndarray) -> pd.DataFrame:
        M = np.where(use[:, None], self._M, np.nan)
        covered = np.isfinite(M)
        ok = covered.sum(axis=0) >= 2
        Ms = np.where(covered, M, np.inf)
        win = np.argmin(Ms, axis=0)
        n = self.run_params_
        nmin = np.where(covered, n[:, None], np.inf).min(axis=0)
        nmax = np.where(covered, n[:, None], -np.inf).max(axis=0)
        nwin = n[win]
        ok &= (nmin < nwin) & (nwin < nmax)
        C = np.exp(self._grid[ok])
        return pd.DataFrame({"compute": C, "params": nwin[ok], "tokens": tokens_for_compute(C, nwin[ok]),
                             "loss": Ms[win[ok], np.flatnonzero(ok)]})

    # -- final points ----------------------------------------------------------------------------------
    def _fit_front(self):
        self.notes_.append(
            "no training curves (one point per run): each run's final point is its curve, and the envelope is "
            "the Pareto front of final losses over compute; give curves for a denser envelope"
        )
        c = self.curves_
        self.points_ = self._front(np.ones(len(c), dtype=bool))
        if len(self.points_) < 3 or self.points_["params"].nunique() < 2:
            raise AnalysisError(
                f"Approach 1 on final points needs at least 3 runs on the loss-compute front with 2 sizes; got "
                f"{len(self.points_)}"
            )
        self.allocation_ = self._law(self.points_)
        rng = np.random.default_rng(self.seed)
        draws = []
        for w in resample_weights(len(c), self.n_boot, rng):
            p = self._front(w > 0)
            draws.append(self._row(p) if len(p) >= 2 and p["params"].nunique() >= 2 else [np.nan] * 4)
        self._set_draws(np.array(draws).reshape(-1, 4))

    def _front(self, use: np.ndarray) -> pd.DataFrame:
        c = self.curves_[use].sort_values(["compute", "loss"])
        best = np.minimum.accumulate(c.loss.to_numpy())
        on = c.loss.to_numpy() <= best
        on[1:] &= c.loss.to_numpy()[1:] < best[:-1]
        p = c[on]
        return pd.DataFrame({"compute": p.compute.to_numpy(), "params": p.params.to_numpy(),
                             "tokens": tokens_for_compute(p.compute.to_numpy(), p.params.to_numpy()), "loss": p.loss.to_numpy()})

    # -- shared ----------------------------------------------------------------------------------------
    @staticmethod
    def _row(p: pd.DataFrame) -> list[float]:
        lc = np.log(p.compute.to_numpy())
        a, lkn = loglinear(lc, np.log(p.params.to_numpy()))
        b, lkd = loglinear(lc, np.log(p.tokens.to_numpy()))
        return [lkn, a, lkd, b]

    def _law(self, p: pd.DataFrame) -> AllocationLaw:
        return AllocationLaw(*self._row(p), level=self.level)

    def _set_draws(self, draws: np.ndarray):
        bad = np.isnan(draws).any(axis=1)
        self.allocation_.draws = draws[~bad]
        self.warnings_ += diagnostics.failed_resamples(int(bad.sum()), self.n_boot)

    def predict(self, compute) -> np.ndarray:
        """The envelope's loss at compute values (interpolated between envelope points in log C)."""
        p = self.points_
        return np.interp(np.log(compute), np.log(p.compute), p.loss)

    def n_opt(self, compute) -> np.ndarray:
        return self.allocation_.n_opt(compute)

    def d_opt(self, compute) -> np.ndarray:
        return self.allocation_.d_opt(compute)

    def residuals(self) -> pd.DataFrame:
        """Envelope points against the fitted N_opt law: residual = log N_opt observed - log N_opt fitted."""
        out = self.points_.copy()
        out["predicted"] = self.n_opt(out.compute)
        out["residual"] = np.log(out.params) - np.log(out.predicted)
        return out
