"""Adaptive designs: choose the next runs by the expected shrinkage of a target's error per unit of cost.

The selector is a pure function of what a sweep knows at a decision point: the candidate pool (N, D[, U] and
a cost per run), the losses revealed so far, the target and the compute left. `select` refits the law once on
the revealed runs (ParametricFit, or DataConstrainedFit where unique tokens are given) and scores every
candidate from that one fit (docs/SCIENCE.md, "Adaptive designs"): score_c = gain_c / cost_c^gamma, gain_c the
expected reduction of the targets' summed squared log error were c's loss seen (g_t the log target t: a planned
run's loss, or log N_opt at a compute C). `scoring` says what that error is:

- "bias" (the default SCORING): the expected squared error when the law is wrong by a smooth discrepancy, a
  Gaussian process over (log10 N, log10 D) with variance BIAS_RATIO x the run noise and length BIAS_LENGTH
  decades, on top of the delta method's variance (analysis/design_bias.py). The fit's bias through the runs it
  is given counts, and so does a planned target's own discrepancy, so runs near the target and spread over the
  grid gain where the variance criteria would buy many small runs. Chosen on held-out tables and studies over
  the variance criteria, which lost to random selection on real grids (benchmarks/results/design.md).
- "delta" and "bootstrap", the variance criteria: gain_c = sum_t Cov(g_t, f_c)^2 / (Var(f_c) + s^2 + (tau d_c)^2)
  with f_c the predicted log loss of candidate c, s^2 the run-to-run variance of log loss (noise_var) and d_c the
  decades of compute from c up to the target: the linear (Kalman) update of the target's variance. The
  covariances come from the delta method at the fit's point ("delta": analysis/delta_cov.py, s^2 under a weak
  prior, as "bias" uses) or from the fit's bootstrap draws ("bootstrap", s^2 the residuals' mean square; its
  choices depend on n_boot). tau (`scale_discount`, SCALE_DISCOUNT = 0: off) and `shared_discrepancy` sigma
  (SHARED_DISCREPANCY = 0: off; a discrepancy correlated in log10 compute, conditioned on the revealed runs,
  `shared_discrepancy()`) were tried with them and not adopted (design.md).

The "bias" scoring linearises the data-constrained law too (its gradients by central differences, the epochs a third
coordinate of the discrepancy); "delta" on that law, and every scoring with family mixtures (`families`: other law
families' draws, so runs that tell the families apart count), use the draws. A batch of K is chosen greedily, each
pick updating the criterion as if its loss had been seen, so a batch does not repeat itself. No refit per candidate.
gamma (`cost_exponent`, default COST_EXPONENT = 0.5) and the scoring were chosen on loss columns, tables and
simulator studies held out from benchmarks/bench_design.py's reported ones. `anchor_share` rho (ANCHOR_SHARE = 0:
off) opens each batch with the run nearest the target's compute that costs at most rho x the compute left, and
`bias_draws` (BIAS_DRAWS = 0: off) averages the bias criterion over the fit's bootstrap draws; both tried and not
adopted (design.md). The initial design shrinks to the smallest identifiable one when the budget is small
(initial_design(budget=...)).
`random_design` and `cheapest_first_design` are the baselines at equal compute.
`replay` runs the sweep loop over an existing table whose losses are revealed one chosen row at a time
(`medscale design`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from . import bounds, delta_cov, design_bias
from .design_bias import AveragedBias, BiasVariance
from .bootstrap import interval
from .conventions import compute_6nd
from .data_constrained import DataConstrainedFit
from .errors import AnalysisError
from .parametric import ParametricFit

COST_EXPONENT = 0.5  # score = gain / cost^gamma (chosen on held-out loss columns and studies: design.md)
SCALE_DISCOUNT = 0.0  # tau: extra sd of log loss per decade of compute from a candidate up to the target (off:
#                       held-out data did not tell 0.01 from 0; benchmarks/results/design.md)
SHARED_DISCREPANCY = 0.0  # sigma: sd of a law's log-loss error shared by runs near each other in compute (off:
#                           mixed on held-out columns and simulator studies; design.md)
DISCREPANCY_LENGTH = 1.0  # ell: decades of compute over which that shared error decorrelates
NOISE_FLOOR = 1e-3  # s (log loss) never below 0.1%: a fit through few runs can interpolate them
NOISE_PRIOR = 2.0  # a0 of the delta scoring's inverse-gamma prior on s^2 (scale a0 Var(log L) of the revealed runs)
SCORINGS = ("bootstrap", "delta", "bias")  # what a candidate's gain is computed from (docs/SCIENCE.md)
SCORING = "bias"  # won held-out cells against random and error against "bootstrap"; "delta" did not (design.md)
BIAS_RATIO = 1.0  # the "bias" scoring's discrepancy variance, in units of the run noise s^2 (design_bias.py)
BIAS_LENGTH = 1.0  # its correlation length, decades of N and D
BIAS_DRAWS = 0  # bootstrap draws the bias criterion is also linearised at and averaged over (0: the point only)
AT_BOUNDS = ("none", "bootstrap", "spread")  # the batch where the fit's E, alpha or beta is at its bound: scored as
# usual, scored by the bootstrap draws (which leave the degenerate point), or the cheapest runs at new compute levels
AT_BOUND = "spread"  # with the bias scoring (the variance scorings: "none"): won held-out cells against random and
#                     error against "none" (design.md, sixth session)
ANCHOR_SHARE = 0.0  # rho: open each batch with the run nearest the target costing <= rho x the compute left (off:
#                     no better than the default on held-out data; design.md)
LEVEL = 0.95


@dataclass(frozen=True)
class Target:
    """What the design should pin down: planned runs' losses (params, tokens[, unique]) or N_opt at `compute`."""

    params: np.ndarray | None = None
    tokens: np.ndarray | None = None
    unique: np.ndarray | None = None
    compute: float | None = None

    @classmethod
    def planned(cls, params, tokens, unique=None) -> "Target":
        arr = lambda v: None if v is None else np.atleast_1d(np.asarray(v, dtype=float))  # noqa: E731
        return cls(arr(params), arr(tokens), arr(unique))

    @classmethod
    def n_opt(cls, compute: float) -> "Target":
        return cls(compute=float(compute))

    @property
    def kind(self) -> str:
        return "n_opt" if self.compute is not None else "loss"

    def log_draws(self, fit) -> np.ndarray:
        """(B, T) draws of the log target from the fit's bootstrap draws (row i = draw i everywhere)."""
        if self.compute is not None:
            return np.log(fit.allocation_.n_opt_draws(self.compute))
        return np.log(_loss_draws(fit, self.params, self.tokens, self.unique))

    def log10_computes(self) -> np.ndarray:
        """log10 compute of each target: C for N_opt, each planned run's 6ND for a loss target."""
        if self.compute is not None:
            return np.array([np.log10(self.compute)])
        return np.log10(compute_6nd(self.params, self.tokens))

    def log10_compute(self) -> float:
        """log10 of the target's compute: C for N_opt, else the planned runs' 6ND (geometric mean)."""
        return float(np.mean(self.log10_computes()))

    def gradient(self, fit, theta=None) -> np.ndarray:
        """(T, p) gradient of the log target with respect to theta (default fit.theta_; a Chinchilla or
        data-constrained fit)."""
        if self.compute is not None:
            return design_bias.n_opt_jacobian(fit, self.compute, theta)
        return design_bias.jacobian(fit, self.params, self.tokens, self.unique, theta)

    def point(self, fit) -> np.ndarray:
        if self.compute is not None:
            return np.atleast_1d(fit.n_opt(self.compute))
        if isinstance(fit, DataConstrainedFit):
            return fit.predict(self.params, self.tokens, self.unique)
        return fit.predict(self.params, self.tokens)


@dataclass
class Batch:
    """One decision: the pool rows chosen (in order), each one's score when chosen (expected reduction of the log
    target's error per FLOP, as the greedy pick saw it), the fit the scores came from, the target's error before
    and after the batch's expected update, and every unrevealed candidate's score as the first pick, budget aside
    (first_pick_scores; None where no candidate was scored)."""

    rows: np.ndarray
    scores: np.ndarray
    fit: object
    variance: float
    variance_after: float
    noise: float
    first_scores: np.ndarray | None = None


def pool_frame(params, tokens, unique=None, cost=None) -> pd.DataFrame:
    """The candidate pool as the selector reads it: params, tokens[, unique_tokens], cost (6ND by default)."""
    df = pd.DataFrame({"params": np.asarray(params, dtype=float), "tokens": np.asarray(tokens, dtype=float)})
    if unique is not None:
        df["unique_tokens"] = np.asarray(unique, dtype=float)
    df["cost"] = compute_6nd(df["params"], df["tokens"]) if cost is None else np.asarray(cost, dtype=float)
    if df.empty:
        raise AnalysisError("the candidate pool is empty: give a table with at least one run")
    return df


def fit_revealed(pool: pd.DataFrame, revealed: dict[int, float], *, n_boot: int, seed: int):
    """The law fitted to the revealed rows (bootstrap draws over runs: no budget labels in a pool)."""
    idx = np.array(sorted(revealed), dtype=int)
    sub, loss = pool.iloc[idx], np.array([revealed[i] for i in idx])
    if "unique_tokens" in pool:
        return DataConstrainedFit(n_boot=n_boot, seed=seed, boot_starts=1).fit(
            sub["params"], sub["tokens"], sub["unique_tokens"], loss)
    return ParametricFit(n_boot=n_boot, seed=seed, boot_starts=1, interval="bootstrap").fit(
        sub["params"], sub["tokens"], loss)


def _loss_draws(fit, params, tokens, unique=None) -> np.ndarray:
    if isinstance(fit, DataConstrainedFit):
        return fit.predict_draws(params, tokens, np.inf if unique is None else unique)
    return fit.predict_draws(params, tokens)


def noise_var(fit, prior: float = 0.0) -> float:
    """Run-to-run variance s^2 of log loss the selector assumes, floored at NOISE_FLOOR^2: the fit's residuals' mean
    square (`prior` 0), or with `prior` a0 > 0 the posterior mean under an inverse-gamma prior of shape a0 and scale
    a0 Var(log L) over the revealed runs, updated with the fit's n residuals: (a0 Var(log L) + SSR / 2) /
    (a0 + n / 2 - 1) (the delta scoring's, a0 = NOISE_PRIOR): a fit through a few runs nearly interpolates them, so
    their mean square understates the noise a new run will see."""
    a0 = float(prior)
    res = fit.residuals()
    r = res["residual"].to_numpy()
    if not a0:
        return float(max(np.mean(r**2), NOISE_FLOOR**2))
    b0 = a0 * float(np.var(np.log(res["loss"].to_numpy())))
    return float(max((b0 + np.sum(r**2) / 2) / (a0 + r.size / 2 - 1), NOISE_FLOOR**2))


def _joint_cov(fit, pool: pd.DataFrame, cand: np.ndarray, target: Target, extra=(),
               scoring: str | None = None, s2: float | None = None) -> tuple[np.ndarray, int]:
    """Covariance of [candidates' log loss, log targets] and the candidate count. `scoring` "delta": the
    delta-method covariance at a Chinchilla fit's point (analysis/delta_cov.py); "bootstrap", or any other fit, or
    with `extra` fits (a mixture): over the fits' finite bootstrap draws, stacked."""
    sub = pool.iloc[cand]
    if _scoring_name(scoring) == "delta" and isinstance(fit, ParametricFit) and not extra:
        s2 = noise_var(fit, NOISE_PRIOR) if s2 is None else s2
        S = delta_cov.joint_cov(fit, s2, sub["params"], sub["tokens"], target.gradient(fit))
        return (S + S.T) / 2, len(cand)
    blocks = []
    for f in (fit, *extra):
        F = np.log(_loss_draws(f, sub["params"], sub["tokens"], sub.get("unique_tokens")))
        g = target.log_draws(f)
        blocks.append(np.hstack([F, g.reshape(len(g), -1)]))
    Z = np.vstack(blocks)
    Z = Z[np.all(np.isfinite(Z), axis=1)]
    if len(Z) < 3:
        raise AnalysisError("the fit's bootstrap gave fewer than 3 usable draws: raise n_boot")
    return np.atleast_2d(np.cov(Z, rowvar=False)), len(cand)


def gains(S: np.ndarray, n: int, s2) -> np.ndarray:
    """Expected reduction of sum_t Var(g_t) if each candidate's log loss were observed with noise s2 (a number,
    or one variance per candidate)."""
    return (S[:n, n:] ** 2).sum(axis=1) / (np.diag(S)[:n] + s2)


def _observe(S: np.ndarray, c: int, s2) -> np.ndarray:
    """The covariance after observing candidate c (linear Gaussian update) with noise variance s2 (c's)."""
    return S - np.outer(S[:, c], S[c, :]) / (S[c, c] + s2)


def discrepancy(pool: pd.DataFrame, cand: np.ndarray, target: Target, tau: float) -> np.ndarray:
    """Each candidate's model-discrepancy variance: (tau x decades of compute from the candidate up to the target)^2
    (0 at or above the target's compute): the law is trusted less the farther below the target a run lies."""
    if not tau:
        return np.zeros(len(cand))
    d = np.clip(target.log10_compute() - np.log10(pool["cost"].to_numpy()[cand]), 0.0, None)
    return (tau * d) ** 2


def family_fits(pool: pd.DataFrame, revealed: dict[int, float], families, *, n_boot: int, seed: int) -> list:
    """Other law families (analysis/families.py names) fitted to the revealed rows, for a mixture's draws; a
    family that cannot be fitted on so few runs is left out."""
    from .families import make_family

    idx = np.array(sorted(revealed), dtype=int)
    sub, loss = pool.iloc[idx], np.array([revealed[i] for i in idx])
    out = []
    for name in families or ():
        if name == "chinchilla":
            continue  # the selector's own fit
        try:
            out.append(make_family(name, n_boot=n_boot, seed=seed, boot_starts=1).fit(
                sub["params"], sub["tokens"], loss, sub.get("unique_tokens")))
        except (AnalysisError, ValueError):
            continue
    return out


def select(pool: pd.DataFrame, revealed: dict[int, float], target: Target, budget_left: float, *, batch: int = 4,
           n_boot: int = 100, seed: int = 0, fit=None, cost_exponent: float | None = None,
           families=None, extra_fits=None, scale_discount: float | None = None,
           shared_discrepancy: float | None = None, discrepancy_length: float | None = None,
           scoring: str | None = None, anchor_share: float | None = None, bias_ratio: float | None = None,
           bias_length: float | None = None, bias_draws: int | None = None, at_bound: str | None = None) -> Batch:
    """The next batch of runs to train: what the sweep loop calls at each decision point.

    Pass: `pool` (pool_frame: params, tokens[, unique_tokens], cost per run in FLOPs; the row index is the
    candidate's id), `revealed` ({pool row: observed final loss} for every run trained so far; at least an
    initial_design's worth), `target` (Target.n_opt(C) or Target.planned(N, D)), `budget_left` (FLOPs still to
    spend). Optional: `batch` (runs per decision), `n_boot` and `seed` (the refit's bootstrap), `fit` (reuse a
    fit_revealed of exactly the revealed rows), `cost_exponent` gamma (score = gain / cost^gamma; default
    COST_EXPONENT), `families` (law family names from analysis/families.py whose draws join the Chinchilla
    fit's, so runs that tell the families apart count; `extra_fits` reuses such fits), `scale_discount` tau,
    `shared_discrepancy` sigma and `discrepancy_length` ell (the correlated discrepancy: shared_discrepancy();
    defaults SHARED_DISCREPANCY = 0, off, and DISCREPANCY_LENGTH; variance scorings only), `scoring` (SCORINGS;
    default SCORING, "bias": the expected squared error under a smooth discrepancy of the law, design_bias.py, with
    `bias_ratio`, `bias_length` and `bias_draws`, defaults BIAS_RATIO, BIAS_LENGTH and BIAS_DRAWS (0: linearised
    at the fit's point only; k: also at k bootstrap draws, averaged, tried and not adopted); "delta": the
    delta-method covariance at the fit's point, the noise under NOISE_PRIOR, no Monte-Carlo noise; "bootstrap":
    covariances over the fit's bootstrap draws, the residuals' mean square as noise; "delta" on a data-constrained
    fit, and `families` with any scoring, use the draws), `anchor_share` rho (open the batch with the run nearest
    the target costing at most rho x `budget_left`; default ANCHOR_SHARE = 0, off), `at_bound` (AT_BOUNDS: what
    chooses the batch when the fit's E, alpha or beta is at its bound, where a linearised criterion has no gradient
    in the direction the runs leave free: "spread", the cheapest affordable runs at compute levels not yet revealed,
    as when the draws cannot score; "bootstrap", the bootstrap scoring; "none", as usual; default AT_BOUND with
    the bias scoring, "none" with the variance scorings).

    Returns a Batch: `rows` (pool rows to train next, in the order picked; empty when nothing unrevealed is
    affordable), `scores` (each pick's score when picked), `fit` (the fit the scores came from), `variance` and
    `variance_after` (the target's summed squared log error, or log-variance for the variance scorings, before and
    after the batch's expected update), `noise`.
    Deterministic for a given (pool, revealed, target, budget_left, seed). Every pick fits in `budget_left`
    together with the picks before it."""
    fit = fit if fit is not None else fit_revealed(pool, revealed, n_boot=n_boot, seed=seed)
    if extra_fits is None:
        extra_fits = family_fits(pool, revealed, families, n_boot=n_boot, seed=seed) if families else []
    cand = np.array([i for i in range(len(pool)) if i not in revealed], dtype=int)
    if cand.size == 0:
        return Batch(cand, np.empty(0), fit, np.nan, np.nan, _noise(fit, scoring))
    fallback = at_bound_of(scoring, at_bound)
    if fallback not in AT_BOUNDS:
        raise ValueError(f"at_bound must be one of {AT_BOUNDS}; got {fallback!r}")
    if fallback != "none" and undetermined(fit):
        if fallback == "spread":
            return _spread_batch(pool, revealed, budget_left, batch, fit, scoring)
        scoring = fallback
    crit, price, s2 = _scoring(fit, pool, cand, target, extra_fits, cost_exponent, scale_discount, revealed,
                               shared_discrepancy, discrepancy_length, scoring, (bias_ratio, bias_length, bias_draws))
    var0 = crit.total()
    cost = pool["cost"].to_numpy()[cand]
    rows, scores, left, taken = [], [], float(budget_left), np.zeros(cand.size, bool)
    anchor = _anchor(pool, cand, target, left, ANCHOR_SHARE if anchor_share is None else float(anchor_share))
    first = None
    for k in range(batch):
        unmasked = crit.gains() / price
        first = unmasked if first is None else first
        score = np.where(~taken & (cost <= left), unmasked, -np.inf)
        c = anchor if k == 0 and anchor is not None else int(np.argmax(score))
        if not np.isfinite(score[c]):
            break
        rows.append(int(cand[c]))
        scores.append(float(score[c]))
        taken[c], left = True, left - cost[c]
        crit.observe(c)
    return Batch(np.array(rows, dtype=int), np.array(scores), fit, var0, crit.total(), s2, first)


def at_bound_of(scoring: str | None, at_bound: str | None) -> str:
    """The at_bound rule a selection uses: the one given, else AT_BOUND for the bias scoring and "none" for the
    variance scorings (the fallback was chosen on held-out data with the bias scoring only)."""
    if at_bound is not None:
        return at_bound
    return AT_BOUND if _scoring_name(scoring) == "bias" else "none"


def undetermined(fit) -> bool:
    """Whether the fit's point has E, alpha or beta at its bound (bounds.at_bound): a law the revealed runs do not
    determine, whose linearisation has no gradient in the direction it is undetermined in."""
    return any(b.where == "estimate" and b.parameter in ("E", "alpha", "beta") for b in bounds.at_bound(fit))


def _anchor(pool: pd.DataFrame, cand: np.ndarray, target: Target, left: float, rho: float) -> int | None:
    """The candidate (index into `cand`) nearest the target in log10 compute among those costing at most rho x the
    compute left (the dearest such run when every target lies above the pool), or None (rho 0, or none cheap
    enough). Nearness is what the fitted law cannot value: on real grids the law's error grows with the distance
    extrapolated, and runs near the target shrink it (benchmarks/results/design.md)."""
    if not rho:
        return None
    cost = pool["cost"].to_numpy()[cand]
    ok = np.flatnonzero(cost <= rho * left)
    if ok.size == 0:
        return None
    d = np.abs(np.log10(cost[ok])[:, None] - target.log10_computes()[None, :]).min(axis=1)
    return int(ok[np.lexsort((-cost[ok], d))[0]])


def _scoring_name(scoring: str | None) -> str:
    """`scoring`, or SCORING when None; an unknown name is refused."""
    scoring = SCORING if scoring is None else scoring
    if scoring not in SCORINGS:
        raise AnalysisError(f"scoring must be one of {SCORINGS}; got {scoring!r}")
    return scoring


def _noise(fit, scoring: str | None) -> float:
    """The noise variance a scoring assumes: the residuals' mean square for "bootstrap", under NOISE_PRIOR for
    "delta" and "bias"."""
    return noise_var(fit, prior=0.0 if _scoring_name(scoring) == "bootstrap" else NOISE_PRIOR)


class _Kalman:
    """The variance criteria's state for one decision: the joint covariance S of [candidates, targets]; `gains()`
    each candidate's reduction of the targets' summed variance, `observe(c)` the linear update as if c were seen."""

    def __init__(self, S: np.ndarray, n: int, noise: np.ndarray):
        self.S, self.n, self.noise = S, n, noise

    def gains(self) -> np.ndarray:
        return gains(self.S, self.n, self.noise)

    def observe(self, c: int) -> None:
        self.S = _observe(self.S, c, self.noise[c])

    def total(self) -> float:
        return float(np.trace(self.S[self.n:, self.n:]))


def _check_discrepancies(scoring: str | None, scale_discount: float | None, shared: float | None) -> None:
    """Refuse tau or sigma with the bias scoring (before a replay starts: inside it a refusal would read as a fit
    that cannot score)."""
    tau = SCALE_DISCOUNT if scale_discount is None else float(scale_discount)
    sigma = SHARED_DISCREPANCY if shared is None else float(shared)
    if _scoring_name(scoring) == "bias" and (tau or sigma):
        raise AnalysisError("scale_discount (--scale-discount) and shared_discrepancy belong to the variance "
                            "scorings (bootstrap, delta); the bias scoring has its own discrepancy (bias_ratio, "
                            "bias_length): drop them or choose a variance scoring (--scoring delta)")


def _scoring(fit, pool: pd.DataFrame, cand: np.ndarray, target: Target, extra_fits, cost_exponent, scale_discount,
             revealed=(), shared=None, length=None, scoring=None, bias=(None, None, None)):
    """What a score is made of: (the criterion, each candidate's price = (cost / the dearest's)^gamma, the noise
    variance the scoring assumes). A candidate's score is criterion.gains() / price. "bias" scoring on a Chinchilla
    or data-constrained fit: design_bias.BiasVariance, or AveragedBias with draws (`bias` = (ratio, length, draws),
    None for BIAS_RATIO, BIAS_LENGTH, BIAS_DRAWS); otherwise the variance of [candidates, targets] (_joint_cov:
    "bias" with `extra_fits` uses the draws with the prior's noise; with a shared discrepancy sigma > 0 also that
    discrepancy's covariance given the `revealed` rows, shared_discrepancy)."""
    gamma = COST_EXPONENT if cost_exponent is None else float(cost_exponent)
    tau = SCALE_DISCOUNT if scale_discount is None else float(scale_discount)
    sigma = SHARED_DISCREPANCY if shared is None else float(shared)
    name, s2 = _scoring_name(scoring), _noise(fit, scoring)
    cost = pool["cost"].to_numpy()[cand]
    price = (cost / cost.max()) ** gamma
    _check_discrepancies(name, tau, sigma)
    if name == "bias" and isinstance(fit, (ParametricFit, DataConstrainedFit)) and not extra_fits:
        ratio, ell = (BIAS_RATIO if bias[0] is None else bias[0]), (BIAS_LENGTH if bias[1] is None else bias[1])
        draws = BIAS_DRAWS if bias[2] is None else int(bias[2])
        sub = pool.iloc[cand]
        args = (fit, sub["params"], sub["tokens"], target, s2, ratio, ell, sub.get("unique_tokens"))
        return (AveragedBias(*args, draws=draws) if draws else BiasVariance(*args)), price, s2
    S, n = _joint_cov(fit, pool, cand, target, extra_fits, name, s2)
    if sigma:
        ell = DISCREPANCY_LENGTH if length is None else float(length)
        S = S + shared_discrepancy(pool, np.asarray(sorted(revealed), dtype=int), cand, target, sigma, ell, s2)
    return _Kalman(S, n, s2 + discrepancy(pool, cand, target, tau)), price, s2


def shared_discrepancy(pool: pd.DataFrame, seen: np.ndarray, cand: np.ndarray, target: Target, sigma: float,
                       ell: float, s2: float) -> np.ndarray:
    """The covariance over [candidates, targets] of a model discrepancy shared by runs near each other in compute,
    given the runs already seen: a Gaussian process in x = log10 compute with kernel
    k(x, x') = sigma^2 exp(-|x - x'| / ell) (a target at its log10_compute), conditioned on the seen runs'
    discrepancy observed with noise s2. Far below the target, a run's error says little about the target's; the
    target's share of it shrinks only as seen runs approach its compute."""
    x_all = np.log10(pool["cost"].to_numpy())
    xs, xc = x_all[seen], x_all[cand]
    xq = np.concatenate([xc, target.log10_computes()])
    k = lambda a, b: sigma**2 * np.exp(-np.abs(a[:, None] - b[None, :]) / ell)  # noqa: E731
    K = k(xq, xq)
    if xs.size:
        A = k(xs, xs) + s2 * np.eye(xs.size)
        B = k(xs, xq)
        K = K - B.T @ np.linalg.solve(A, B)
    return (K + K.T) / 2


def first_pick_scores(fit, pool: pd.DataFrame, revealed: dict[int, float], target: Target, *,
                      cost_exponent: float | None = None, scale_discount: float | None = None,
                      shared_discrepancy: float | None = None, discrepancy_length: float | None = None,
                      scoring: str | None = None, bias_ratio: float | None = None,
                      bias_length: float | None = None, bias_draws: int | None = None) -> np.ndarray:
    """Each unrevealed candidate's score (in pool order) as a batch's first pick from `fit`: what `select` ranks
    before its first choice, budget aside (the scores an adaptive sweep records with each decision)."""
    cand = np.array([i for i in range(len(pool)) if i not in revealed], dtype=int)
    if cand.size == 0:
        return np.empty(0)
    crit, price, _ = _scoring(fit, pool, cand, target, (), cost_exponent, scale_discount, revealed,
                              shared_discrepancy, discrepancy_length, scoring, (bias_ratio, bias_length, bias_draws))
    return crit.gains() / price


def initial_design(pool: pd.DataFrame, min_runs: int = 7, budget: float | None = None) -> np.ndarray:
    """The cheapest runs that spread over sizes, token counts and scales: in order of cost, a row is taken when it
    adds a model size or a token count while there are fewer than 3 of either, or a compute level (cost rounded
    to 0.05 decades) while there are fewer than 3; then the cheapest remaining rows up to `min_runs` (a
    5-parameter law needs 6 points; 7 leaves a residual). The compute levels matter on IsoFLOP pools, whose
    cheapest budget alone has as many sizes and token counts as wanted and identifies no law.

    With a `budget` that this design does not fit in, smaller identifiable designs are tried in turn: one run
    fewer (6 for the Chinchilla law: its 5 parameters plus one), then 2 compute levels, then none required (3 sizes
    and 3 token counts always); the first that fits is returned (else the last, which the caller refuses)."""
    if budget is None:
        return _spread(pool, min_runs, 3)
    cost = pool["cost"].to_numpy()
    for runs, levels in ((min_runs, 3), (min_runs - 1, 3), (min_runs - 1, 2), (min_runs - 1, 1)):
        design = _spread(pool, runs, levels)
        if cost[design].sum() <= budget:
            break
    return design


def _spread(pool: pd.DataFrame, min_runs: int, levels: int) -> np.ndarray:
    cost = pool["cost"].to_numpy()
    order = np.argsort(cost, kind="stable")
    N, D = np.round(np.log(pool["params"].to_numpy()), 6), np.round(np.log(pool["tokens"].to_numpy()), 6)
    level = np.round(np.log10(cost) / 0.05)
    chosen: list[int] = []
    for row in order:
        if _identified(N, D, chosen, 0) and np.unique(level[chosen]).size >= levels:
            break
        if ((N[row] not in N[chosen] and np.unique(N[chosen]).size < 3)
                or (D[row] not in D[chosen] and np.unique(D[chosen]).size < 3)
                or (level[row] not in level[chosen] and np.unique(level[chosen]).size < levels)):
            chosen.append(int(row))
    chosen += [int(r) for r in order if r not in chosen][:max(0, min_runs - len(chosen))]
    return np.array(chosen, dtype=int)


def _identified(N, D, rows, min_runs) -> bool:
    return len(rows) >= min_runs and np.unique(N[rows]).size >= 3 and np.unique(D[rows]).size >= 3


def _spread_pick(pool: pd.DataFrame, revealed, budget_left: float, batch: int) -> np.ndarray:
    """When the fit cannot score candidates (too few usable draws): the cheapest affordable rows at compute
    levels not yet revealed, then the cheapest."""
    cost = pool["cost"].to_numpy()
    level = np.round(np.log10(cost) / 0.05)
    seen = {level[i] for i in revealed}
    order = [int(r) for r in np.argsort(cost, kind="stable") if int(r) not in revealed]
    order = [r for r in order if level[r] not in seen] + [r for r in order if level[r] in seen]
    rows, left = [], float(budget_left)
    for r in order:
        if len(rows) < batch and cost[r] <= left:
            rows.append(r)
            left -= cost[r]
    return np.array(rows, dtype=int)


def _spread_batch(pool: pd.DataFrame, revealed, budget_left: float, batch: int, fit, scoring) -> Batch:
    """A batch of _spread_pick rows, unscored: where the fit cannot score candidates or is at a bound."""
    rows = _spread_pick(pool, revealed, budget_left, batch)
    return Batch(rows, np.full(rows.size, np.nan), fit, np.nan, np.nan, _noise(fit, scoring))


@dataclass
class Step:
    step: int
    rows: np.ndarray
    scores: np.ndarray
    spent: float
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def width(self) -> float:
        """The target's interval width relative to its prediction, averaged over targets."""
        return float(np.mean((self.high - self.low) / self.point))


@dataclass
class Replay:
    chosen: pd.DataFrame  # pool row, order, step, score, cost
    steps: list[Step] = field(default_factory=list)
    fit: object = None
    budget: float = 0.0
    stopped: str = ""


def predict_target(fit, target: Target, level: float = LEVEL, seed: int = 0):
    """The target's point and interval: a planned run's loss for a new run (draws times a noise factor resampled
    from the fit's residuals), or N_opt (draws only)."""
    point = target.point(fit)
    draws = np.exp(target.log_draws(fit))
    if target.kind == "loss":
        r = fit.residuals()["residual"].to_numpy()
        draws = draws * np.exp(np.random.default_rng(seed).choice(r, size=draws.shape))
    lo, hi = interval(draws, level)
    return point, lo, hi


def replay(pool: pd.DataFrame, reveal: Callable[[int], float], target: Target, budget: float, *, batch: int = 4,
           n_boot: int = 100, seed: int = 0, stop_width: float | None = None,
           on_step: Callable[[Step], None] | None = None, cost_exponent: float | None = None,
           families=None, scale_discount: float | None = None, shared_discrepancy: float | None = None,
           discrepancy_length: float | None = None, scoring: str | None = None,
           anchor_share: float | None = None, bias_ratio: float | None = None,
           bias_length: float | None = None, bias_draws: int | None = None, at_bound: str | None = None) -> Replay:
    """The sweep loop over a table: the initial design, then refit -> choose a batch -> reveal its losses, until
    nothing affordable is left or the target's relative interval width is <= stop_width. `reveal(row)` is called
    once per chosen row, after it is chosen, and is the only way a loss is read."""
    _check_discrepancies(scoring, scale_discount, shared_discrepancy)
    init = initial_design(pool, min_runs=9 if "unique_tokens" in pool else 7, budget=budget)
    cost = pool["cost"].to_numpy()
    if cost[init].sum() > budget:
        total = cost.sum()
        raise AnalysisError(f"the initial design ({init.size} runs spread over N and D, {cost[init].sum():.3g} "
                            f"FLOPs) costs more than the budget ({budget:.3g} FLOPs, {budget / total:.1%} of the "
                            f"pool): raise the fraction to at least {cost[init].sum() / total:.3f}")
    revealed: dict[int, float] = {}
    log: list[tuple[int, int, float]] = []
    spent, batch_rows, batch_scores, step, fit = 0.0, init, np.full(init.size, np.nan), 0, None
    out = Replay(chosen=pd.DataFrame(), budget=budget)
    while True:
        for r, s in zip(batch_rows, batch_scores):
            revealed[int(r)] = float(reveal(int(r)))
            log.append((int(r), step, float(s)))
            spent += cost[r]
        fit = fit_revealed(pool, revealed, n_boot=n_boot, seed=seed)
        point, lo, hi = predict_target(fit, target, seed=seed)
        out.steps.append(Step(step, np.asarray(batch_rows), np.asarray(batch_scores), spent, point, lo, hi))
        if on_step is not None:
            on_step(out.steps[-1])
        if stop_width is not None and out.steps[-1].width <= stop_width:
            out.stopped = f"the target's interval width {out.steps[-1].width:.2%} <= {stop_width:.2%}"
            break
        try:
            nxt = select(pool, revealed, target, budget - spent, batch=batch, n_boot=n_boot, seed=seed, fit=fit,
                         cost_exponent=cost_exponent, families=families, scale_discount=scale_discount,
                         shared_discrepancy=shared_discrepancy, discrepancy_length=discrepancy_length,
                         scoring=scoring, anchor_share=anchor_share, bias_ratio=bias_ratio,
                         bias_length=bias_length, bias_draws=bias_draws, at_bound=at_bound)
        except AnalysisError:  # the fit's draws cannot score candidates yet: spread over scales instead
            nxt = _spread_batch(pool, revealed, budget - spent, batch, fit, scoring)
        if nxt.rows.size == 0:
            out.stopped = "no unchosen run fits in the compute left" if len(revealed) < len(pool) else "pool exhausted"
            break
        step, batch_rows, batch_scores = step + 1, nxt.rows, nxt.scores
    out.fit = fit
    out.chosen = pd.DataFrame(log, columns=["row", "step", "score"]).assign(
        order=lambda d: np.arange(1, len(d) + 1), cost=lambda d: cost[d["row"]])
    return out


def random_design(pool: pd.DataFrame, budget: float, seed: int) -> np.ndarray:
    """Rows in a random order, each kept if it still fits in the budget: random selection at equal compute."""
    cost = pool["cost"].to_numpy()
    rows, spent = [], 0.0
    for r in np.random.default_rng(seed).permutation(len(pool)):
        if spent + cost[r] <= budget:
            rows.append(int(r))
            spent += cost[r]
    return np.array(rows, dtype=int)


def cheapest_first_design(pool: pd.DataFrame, budget: float) -> np.ndarray:
    """Rows from the cheapest up, each kept while it fits in the budget: the small-runs-first baseline."""
    cost = pool["cost"].to_numpy()
    rows, spent = [], 0.0
    for r in np.argsort(cost, kind="stable"):
        if spent + cost[r] <= budget:
            rows.append(int(r))
            spent += cost[r]
    return np.array(rows, dtype=int)
