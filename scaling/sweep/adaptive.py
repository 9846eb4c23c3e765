"""Adaptive sweeps (`grid: {mode: adaptive}`): run a small initial design from a candidate pool, then refit and
choose the next batch by the expected reduction of the target's error per FLOP (analysis/design.py `select`),
until the compute budget is spent or the target's interval is narrow enough.

The pool is expanded once, by the same code as a ladder or IsoFLOP grid (spec.expand), so each candidate is a
resolved run config with its run id, and choosing one means training exactly that config through the ordinary
machinery (pipeline.launch_sweep -> scheduler.run_sweep on the chosen runs). The sweep's identity is its pool,
not the runs it has chosen so far: `<out>/adaptive/<sweep>/pool.json` holds it, and a rerun whose pool, target,
seed, initial design size or bootstrap differs is refused.

Every decision is recorded before its runs start, atomically, as `<out>/adaptive/<sweep>/decision-NNNN.json`:
the batch index, the candidates with their cost and score, the chosen run ids, the fit the choice used (its
parameters and the target's interval), and the compute spent before and after. A rerun replays the recorded
decisions (it never re-selects them), finishes their unfinished runs, then goes on; a finished sweep records a
`stop` decision, and a rerun of it trains nothing. Same spec, same store, same seed: the same choices.

Cost (what `grid.budget` counts): the full FLOP count the scheduler uses (scaling/plan/flops.py, as
scheduler.run_flops). Under the WSD schedule a cooldown branch costs only its cooldown once its trunk has been
trained (the trunk keeps a fork checkpoint for every branch of the pool), and its whole length before.

A pool over several `dataset.train_fraction` values is a data-constrained pool: each candidate also carries the
unique tokens U its fraction of the training split holds (config_unique), the loop fits the data-constrained law
(analysis/data_constrained.py) and scores candidates with it, a planned target trains on the whole split (U at
fraction 1), and the initial design has at least DATA_CONSTRAINED_INITIAL runs (the law has 7 parameters).

Run configs are read only through the accessors below (config_params, config_tokens, config_costs, config_trunk,
config_unique, and store.run_id).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from medscale.analysis.design import (Target, at_bound_of, fit_revealed, initial_design, pool_frame, predict_target,
                                     select, undetermined)
from medscale.atomic import CorruptFile, read_json, write_json, write_yaml
from medscale.models.config import ModelConfig, counted_params
from medscale.scaling.errors import UserError
from medscale.scaling.plan.flops import flops_per_token
from medscale.scaling.sweep.ray_session import ray_session
from medscale.scaling.sweep.spec import SpecError
from medscale.scaling.sweep.step_dir import identity_hash
from medscale.scaling.sweep.store import FINAL_STATES, RunStore, run_id
from medscale.scaling.sweep.wsd import fork_of, trained_steps

DECISIONS_DIR = "adaptive"
DECISION_FILE = re.compile(r"decision-(\d{4,})\.json")
# what a recorded decision means: a rerun must agree on these (budget, stop_width and batch may change: they
# only steer the decisions still to come)
IDENTITY_KEYS = ("pool", "target", "seed", "initial", "n_boot", "scoring", "at_bound")
# a sweep recorded before grid.scoring (grid.at_bound) existed chose with what was then the only default
LEGACY = {"scoring": "bootstrap", "at_bound": "none"}
DATA_CONSTRAINED_INITIAL = 9  # the smallest initial design of a data-constrained pool: 7 parameters and a residual


# ---------------------------------------------------------------------------------------------
# Run configs, read through a few accessors
# ---------------------------------------------------------------------------------------------

def config_params(config: dict) -> float:
    """N as the run's convention counts it (model.param_count), as the fits count it."""
    return float(counted_params(ModelConfig.from_dict(config["model"]), config.get("param_count")))


def config_tokens(config: dict) -> float:
    return float(config["train"]["tokens"])


def config_costs(config: dict) -> tuple[float, float]:
    """(FLOPs trained from scratch, FLOPs once its WSD trunk is trained): the full count, as the scheduler's."""
    per_token = flops_per_token(ModelConfig.from_dict(config["model"]), config["data"]["seq_len"]).full
    full = per_token * config_tokens(config)
    return full, full * trained_steps(config) / max(1, int(config["train"]["steps"]))


def config_trunk(config: dict) -> str | None:
    """The run id of a WSD branch's trunk; None for any other run."""
    fork = fork_of(config)
    return fork[0] if fork else None


def config_fraction(config: dict) -> float:
    return float(config["data"].get("train_fraction") or 1.0)


def config_unique(config: dict, fraction: float | None = None) -> float:
    """The unique tokens U of the training split the run draws from (at `fraction` instead of its own if given):
    past U tokens it repeats data. Reads the prepared dataset (data/loader.py unique_train_tokens)."""
    from medscale.data.loader import unique_train_tokens  # grain: only a data-constrained pool needs it

    data = config["data"]
    return float(unique_train_tokens(data["token_dir"], "train", int(data["seq_len"]),
                                     config_fraction(config) if fraction is None else fraction))


@dataclass
class Pool:
    """The candidate runs, in the order the spec expands them (row i is configs[i])."""
    configs: list[dict]
    ids: list[str]
    params: np.ndarray
    tokens: np.ndarray
    full: np.ndarray  # FLOPs from scratch
    marginal: np.ndarray  # FLOPs once the trunk is paid (= full unless a WSD branch)
    trunks: list[str | None]
    unique: np.ndarray | None = None  # unique tokens U per run: a data-constrained pool (several train fractions)
    unique_all: float | None = None  # U of the whole training split (fraction 1): a planned target's

    @classmethod
    def of(cls, runs: list[dict]) -> "Pool":
        costs = [config_costs(r) for r in runs]
        pool = cls(list(runs), [run_id(r) for r in runs], np.array([config_params(r) for r in runs]),
                   np.array([config_tokens(r) for r in runs]), np.array([c[0] for c in costs]),
                   np.array([c[1] for c in costs]), [config_trunk(r) for r in runs])
        fractions = {config_fraction(r) for r in runs}
        if len(fractions) > 1:  # one dataset and seq_len: U depends on the fraction only, read once each
            unique = {f: config_unique(runs[0], f) for f in fractions | {1.0}}
            pool.unique = np.array([unique[config_fraction(r)] for r in runs])
            pool.unique_all = unique[1.0]
        return pool

    @property
    def data_constrained(self) -> bool:
        return self.unique is not None

    def __len__(self) -> int:
        return len(self.configs)

    def row(self, run_id: str) -> int:
        return self.ids.index(run_id)

    def costs(self, paid: set[str]) -> np.ndarray:
        """Each candidate's cost now: a branch whose trunk has been trained costs only its cooldown."""
        return np.array([m if t is not None and t in paid else f
                         for f, m, t in zip(self.full, self.marginal, self.trunks)])

    def frame(self, rows: np.ndarray, paid: set[str]) -> pd.DataFrame:
        """The selector's pool (analysis/design.py pool_frame) over `rows`, priced as of `paid`."""
        unique = None if self.unique is None else self.unique[rows]
        return pool_frame(self.params[rows], self.tokens[rows], unique, cost=self.costs(paid)[rows])

    def identity(self) -> str:
        return identity_hash({"runs": self.ids})

    def planned_flops(self) -> float:
        """What training the whole pool as a grid costs (under WSD: trunks whole, branches their cooldown)."""
        return float(self.marginal.sum())


def target_of(grid, pool: Pool | None = None):
    """The analysis Target of an AdaptiveGrid's `target`; over a data-constrained `pool` a planned run trains on
    the whole training split (pool.unique_all unique tokens)."""
    if grid.target.n_opt_at is not None:
        return Target.n_opt(grid.target.n_opt_at)
    planned = grid.target.planned
    unique = None if pool is None or not pool.data_constrained else [pool.unique_all] * len(planned)
    return Target.planned([p.params for p in planned], [p.tokens for p in planned], unique)


def target_text(grid, pool: Pool | None = None) -> str:
    if grid.target.n_opt_at is not None:
        return f"N_opt at C = {grid.target.n_opt_at:.3g} FLOPs (6ND)"
    unique = f", U = {pool.unique_all:.3g}" if pool is not None and pool.data_constrained else ""
    return "the loss of " + ", ".join(f"N = {p.params:.3g}, D = {p.tokens:.3g}{unique}" for p in grid.target.planned)


def is_adaptive(spec) -> bool:
    return getattr(spec.grid, "mode", None) == "adaptive"


def initial_rows(spec, pool: Pool) -> np.ndarray:
    """The initial design (analysis/design.py initial_design): the cheapest runs spread over N and D."""
    rows = np.arange(len(pool))
    least = max(spec.grid.initial, DATA_CONSTRAINED_INITIAL) if pool.data_constrained else spec.grid.initial
    return initial_design(pool.frame(rows, set()), min_runs=min(least, len(pool)))


def check_pool(spec, pool: Pool, source: str) -> np.ndarray:
    """Refuse (SpecError, exit 2, before any compute) a pool the loop cannot start on; returns the initial rows."""
    grid = spec.grid
    sizes, lengths = np.unique(np.round(pool.params)).size, np.unique(np.round(pool.tokens)).size
    if sizes < 3 or lengths < 3:
        raise SpecError(f"{source}: grid: the pool has {sizes} distinct model size(s) and {lengths} distinct token "
                        "count(s); a law of N and D needs at least 3 of each: add entries to grid.params and "
                        "grid.tokens (or grid.compute)")
    init = initial_rows(spec, pool)
    cost = float(pool.full[init].sum())
    if cost > grid.budget:
        raise SpecError(f"{source}: grid.budget: {grid.budget:.3g} FLOPs does not pay for the initial design "
                        f"({init.size} runs spread over N and D cost {cost:.3g} FLOPs, full count); raise grid.budget "
                        f"to at least {cost:.3g}, or add smaller sizes or token counts to the pool")
    return init


def identity(spec, pool: Pool) -> dict:
    grid = spec.grid
    return {"sweep": spec.name, "pool": pool.identity(), "runs": len(pool), "target": grid.target.model_dump(),
            "seed": grid.seed, "initial": grid.initial, "n_boot": grid.n_boot, "scoring": grid.scoring,
            "at_bound": at_bound_of(grid.scoring, grid.at_bound)}


# ---------------------------------------------------------------------------------------------
# The decision record
# ---------------------------------------------------------------------------------------------

class History:
    """`<out>/adaptive/<sweep>/`: pool.json (the sweep's identity) and one decision-NNNN.json per decision,
    each written atomically (medscale.atomic) before its runs start."""

    def __init__(self, root: Path | str, name: str):
        self.dir = Path(root) / DECISIONS_DIR / name

    def claim(self, ident: dict) -> None:
        """Record the sweep's identity, or refuse (UserError) a spec whose identity differs from the recorded one."""
        path = self.dir / "pool.json"
        try:
            known = read_json(path)
        except CorruptFile:
            known = None
        if isinstance(known, dict):
            changed = [k for k in IDENTITY_KEYS if known.get(k, LEGACY.get(k)) != ident.get(k)]
            if changed:
                what = ", ".join("pool of candidate runs (grid.params, grid.tokens or grid.compute, seeds, model, "
                                 "optimizer, dataset)" if k == "pool" else f"grid.{k}" for k in changed)
                raise UserError(
                    f"{self.dir.parent.parent}: adaptive sweep {ident['sweep']!r} was started with a different "
                    f"{what}; its "
                    f"{len(self.decisions())} recorded decision(s) were made for that one and would not be the same "
                    "choices. Set it back to resume the sweep, or use another --out or rename the sweep (name:) to "
                    "start a new one (grid.budget, grid.stop_width and grid.batch may change between reruns).")
            return
        write_json(path, ident)

    def decisions(self) -> list[dict]:
        """The recorded decisions in order; a gap or a damaged file ends the history there (the later ones are
        decided again: the same choices, as the choice is a function of the runs before it)."""
        found = {}
        for p in self.dir.glob("decision-*.json") if self.dir.is_dir() else ():
            m = DECISION_FILE.fullmatch(p.name)
            if m:
                found[int(m.group(1))] = p
        out = []
        for k in range(len(found)):
            try:
                record = read_json(found[k]) if k in found else None
            except CorruptFile:
                record = None
            if not isinstance(record, dict) or record.get("batch") != k:
                break
            out.append(record)
        return out

    def record(self, decision: dict) -> Path:
        return write_json(self.dir / f"decision-{decision['batch']:04d}.json", decision)


def _finite(x) -> float | None:
    """A number for a decision record: None where there is none (a batch chosen without scores, at a bound)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _run_row(pool: Pool, r: int, cost: float, score: float | None) -> dict:
    unique = {} if pool.unique is None else {"unique_tokens": float(pool.unique[r])}
    return {"run_id": pool.ids[r], "params": float(pool.params[r]), "tokens": float(pool.tokens[r]), **unique,
            "cost": float(cost), "score": _finite(score)}


def _fit_record(fit, target, seed: int, n_runs: int) -> dict:
    point, low, high = predict_target(fit, target, seed=seed)
    point, low, high = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (point, low, high))
    estimates = getattr(fit, "estimates_", {}) or {}
    return {"law": type(fit).__name__, "runs": n_runs,
            "parameters": {k: e.to_dict() for k, e in estimates.items()},
            "target": {"kind": target.kind, **({"compute": target.compute} if target.compute is not None else {}),
                       "point": point.tolist(), "low": low.tolist(), "high": high.tolist(),
                       "width": float(np.mean((high - low) / point))}}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclass
class AdaptiveRun:
    """What an adaptive sweep did: its decisions (as recorded), the compute spent against the pool's."""
    name: str
    decisions: list[dict]
    pool_runs: int
    pool_flops: float  # the whole pool as a grid (under WSD: trunks whole, branches their cooldown)
    budget: float
    stopped: str = ""
    trained: list[str] = field(default_factory=list)  # run ids this call launched (replayed or new)

    @property
    def chosen(self) -> list[str]:
        return [c["run_id"] for d in self.decisions for c in d["chosen"]]

    @property
    def spent(self) -> float:
        return float(self.decisions[-1]["spent_after"]) if self.decisions else 0.0

    def lines(self) -> list[str]:
        out = [f"adaptive sweep {self.name}: {len(self.chosen)} of {self.pool_runs} candidate runs chosen; "
               f"{self.spent:.3g} FLOPs spent of the budget {self.budget:.3g} ({self.spent / self.pool_flops:.0%} of "
               f"the {self.pool_flops:.3g} FLOPs the whole pool would cost)"]
        for d in self.decisions:
            fit = d.get("fit")
            width = f"target {_target_line(fit)}" if fit else "no fit yet"
            out.append(f"  decision {d['batch']} ({d['kind']}): {len(d['chosen'])} run(s), spent "
                       f"{d['spent_after']:.3g} FLOPs; {width}")
        out.append(f"  {self.stopped or 'not finished: rerun the same command to continue'}")
        return out


def _target_line(fit: dict) -> str:
    t = fit["target"]
    return (f"{t['point'][0]:.4g} [{t['low'][0]:.4g}, {t['high'][0]:.4g}] (95%, relative width {t['width']:.3f}) "
            f"from {fit['runs']} runs")


def _quiet():
    """Bootstrap draws at an optimisation bound give inf or NaN, which the selector drops: no warnings for them."""
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def adaptive_loop(spec, pool: Pool, history: History, train: Callable[[list[int]], None],
                  outcome: Callable[[int], tuple[str, float | None]], *, max_batches: int | None = None,
                  say: Callable[[str], None] = lambda m: None) -> AdaptiveRun:
    """The sweep loop over `pool`, with how runs are trained (`train(rows)`, which returns once each is finished)
    and read (`outcome(row)` -> (state, final loss)) passed in. Replays `history`'s decisions, then decides and
    records the next ones until the budget, the stopping width, or `max_batches` decisions (a test's kill)."""
    loop = _Loop(spec, pool, history, train, outcome, say)
    if loop.replay():
        return loop.result
    while max_batches is None or len(loop.records) < max_batches:
        if not loop.decide_and_run():
            break
    else:
        loop.result.stopped = f"stopped after {max_batches} decision(s) (max_batches): rerun to continue"
    loop.result.decisions = loop.records
    return loop.result


class _Loop:
    """The adaptive sweep's state between decisions: what was chosen, trained, paid for and revealed."""

    def __init__(self, spec, pool: Pool, history: History, train, outcome, say):
        self.spec, self.grid, self.pool, self.history = spec, spec.grid, pool, history
        self.train, self.outcome, self.say = train, outcome, say
        self.target = target_of(spec.grid, pool)
        self.records = history.decisions()
        self.result = AdaptiveRun(spec.name, self.records, len(pool), pool.planned_flops(), spec.grid.budget)
        self.paid: set[str] = set()  # run ids trained (so their branches are priced at the cooldown)
        self.revealed: dict[int, float] = {}  # pool row -> final loss
        self.dead: set[int] = set()  # chosen rows with no loss (diverged): never offered again
        self.spent = 0.0

    def read(self, rows) -> None:
        for r in rows:
            state, loss = self.outcome(r)
            if state == "done":  # a trunk that finished kept the fork checkpoints of all its branches
                self.paid.add(self.pool.ids[r])
            if state == "done" and loss is not None and np.isfinite(loss):
                self.revealed[r] = float(loss)
            else:
                self.dead.add(r)

    def run(self, rows: list[int]) -> None:
        if rows:
            self.result.trained += [self.pool.ids[r] for r in rows]
            self.train(rows)
            self.read(rows)

    def replay(self) -> bool:
        """Train what was decided, as decided (all at once: their order no longer matters). True when the
        recorded decisions end in a stop under the same settings: the sweep is finished."""
        replayed = [self.pool.row(c["run_id"]) for d in self.records for c in d["chosen"]]
        if replayed:
            self.say(f"adaptive sweep {self.spec.name}: replaying {len(self.records)} recorded decision(s) "
                     f"({len(replayed)} run(s))")
        self.run(replayed)
        self.spent = self.result.spent
        last = self.records[-1] if self.records else None
        settings = (self.grid.budget, self.grid.stop_width)  # a stop under other settings is where it goes on from
        if last is not None and last["kind"] == "stop" and (last["budget"], last["stop_width"]) == settings:
            self.result.stopped = f"finished: {last['stopped']}"
            return True
        return False

    def decide_and_run(self) -> bool:
        """Record the next decision (before its runs start: a kill from there on replays it), then train its
        runs. False when the decision is to stop."""
        k = len(self.records)
        base = {"batch": k, "sweep": self.spec.name, "pool": self.pool.identity(), "budget": self.grid.budget,
                "stop_width": self.grid.stop_width, "batch_size": self.grid.batch, "spent_before": self.spent}
        decision, rows = self._initial(base) if k == 0 else self._next(base)
        decision["cost"] = float(sum(c["cost"] for c in decision["chosen"]))
        decision["spent_after"] = self.spent + decision["cost"]
        self.history.record(decision)
        self.records.append(decision)
        if decision["kind"] == "stop":
            self.result.stopped = f"finished: {decision['stopped']}"
            self.say(f"adaptive sweep {self.spec.name}: {self.result.stopped}")
            return False
        self.say(f"adaptive sweep {self.spec.name}: decision {k} ({decision['kind']}): {len(rows)} run(s), "
                 f"{decision['cost']:.3g} FLOPs" +
                 (f"; target {_target_line(decision['fit'])}" if decision["fit"] else ""))
        self.spent = decision["spent_after"]
        self.run([int(r) for r in rows])
        return True

    def _initial(self, base: dict) -> tuple[dict, np.ndarray]:
        rows = initial_rows(self.spec, self.pool)
        cost = self.pool.costs(self.paid)
        return {**base, "kind": "initial", "fit": None, "stopped": None,
                "candidates": [_run_row(self.pool, r, cost[r], None) for r in range(len(self.pool))],
                "chosen": [_run_row(self.pool, int(r), cost[r], None) for r in rows]}, rows

    def _next(self, base: dict) -> tuple[dict, np.ndarray]:
        """Refit on what is revealed; stop at the width, else select the next batch within the budget left."""
        grid = self.grid
        usable = np.array([r for r in range(len(self.pool)) if r not in self.dead], dtype=int)
        local = {int(i): self.revealed[int(r)] for i, r in enumerate(usable) if int(r) in self.revealed}
        frame = self.pool.frame(usable, self.paid)
        with _quiet():
            fit = fit_revealed(frame, local, n_boot=grid.n_boot, seed=grid.seed)
            fit_rec = _fit_record(fit, self.target, grid.seed, len(local))
        left = grid.budget - self.spent
        stop = None
        chosen, scores = np.empty(0, int), np.empty(0)
        if grid.stop_width is not None and fit_rec["target"]["width"] <= grid.stop_width:
            stop = (f"the target's interval width {fit_rec['target']['width']:.3f} <= grid.stop_width "
                    f"{grid.stop_width:g}")
        else:
            with _quiet():
                batch = select(frame, local, self.target, left, batch=grid.batch, n_boot=grid.n_boot,
                               seed=grid.seed, fit=fit, scoring=grid.scoring, at_bound=grid.at_bound)
            chosen, scores = np.asarray(batch.rows, dtype=int), np.asarray(batch.scores, dtype=float)
            fit_rec.update(variance=_finite(batch.variance), variance_after=_finite(batch.variance_after),
                           noise=_finite(batch.noise), undetermined=bool(undetermined(fit)))
            if chosen.size == 0:
                stop = ("every candidate has been run" if len(local) + len(self.dead) >= len(self.pool) else
                        f"no candidate left fits in the {left:.3g} FLOPs left of grid.budget")
        first = batch.first_scores if stop is None else None  # the batch's own first-pick scores
        cand = [i for i in range(len(frame)) if i not in local]
        cost = frame["cost"].to_numpy()
        decision = {**base, "kind": "stop" if stop else "select", "fit": fit_rec, "stopped": stop,
                    "candidates": [_run_row(self.pool, int(usable[i]), cost[i], None if first is None else first[j])
                                   for j, i in enumerate(cand)],
                    "chosen": [_run_row(self.pool, int(usable[i]), cost[i], s) for i, s in zip(chosen, scores)]}
        return decision, np.array([usable[i] for i in chosen], dtype=int)


@contextlib.contextmanager
def _lazy_ray(address: str | None) -> Iterator[Callable[[], None]]:
    """A callable that opens a Ray session (ray_session) the first time a batch needs training; it ends with
    this block. A sweep with nothing left to train never starts Ray."""
    with contextlib.ExitStack() as stack:
        opened: list[bool] = []

        def ensure() -> None:
            if not opened:
                stack.enter_context(ray_session(address))
                opened.append(True)

        yield ensure


def run_adaptive(spec, runs: list[dict], out_dir: Path | str, *, address: str | None = None,
                 max_concurrent: int | None = None, retry_failed: bool = False, reporter=None,
                 max_batches: int | None = None, source: str = "<spec>") -> AdaptiveRun:
    """An adaptive sweep of `spec` over its expanded pool `runs` (spec.expand), in the store at `out_dir`: each
    batch through pipeline.launch_sweep (Ray, skipping finished runs), the spec's downstream evaluation once at
    the end. A rerun resumes (see the module docstring)."""
    from medscale.scaling.pipeline import Reporter, launch_sweep, run_downstream

    reporter = reporter or Reporter()
    pool = Pool.of(runs)
    check_pool(spec, pool, source)
    store = RunStore(out_dir, say=reporter.say).claim()
    if runs:
        store.refuse_mixed_sweep(spec.name, runs[0]["data"]["dataset_id"], spec.dataset.model_dump())
        store.refuse_changed_sweep(spec.name, runs)  # the pool's meaning, not the runs chosen so far
    history = History(store.root, spec.name)
    history.claim(identity(spec, pool))
    write_yaml(store.root / "sweeps" / f"{spec.name}.yaml", spec.model_dump())
    batch_spec = spec.model_copy(update={"downstream": None})  # downstream once, at the end

    def outcome(row: int) -> tuple[str, float | None]:
        run = store.run_dir(pool.ids[row])
        if not run.path.is_dir():
            return "pending", None
        state = run.state()
        try:
            loss = (run.metrics() or {}).get("loss") if state == "done" else None
        except CorruptFile:
            loss = None
        return state, None if loss is None else float(loss)

    with _lazy_ray(address) as ensure_ray:
        def train(rows: list[int]) -> None:
            if all(outcome(r)[0] in FINAL_STATES for r in rows):
                return  # a rerun: nothing to train, so no Ray to start
            ensure_ray()
            launch_sweep(batch_spec, [pool.configs[r] for r in rows], store.root, address=address,
                         max_concurrent=max_concurrent, retry_failed=retry_failed, reporter=reporter)

        result = adaptive_loop(spec, pool, history, train, outcome, max_batches=max_batches, say=reporter.say)
    write_yaml(store.root / "sweeps" / f"{spec.name}.yaml", spec.model_dump())  # launch_sweep wrote batch_spec's
    if spec.downstream is not None:
        done = [c for c in result.chosen if outcome(pool.row(c))[0] == "done"]
        if done:
            run_downstream(store.root, spec.downstream, runs=done, reporter=reporter)
    return result


# ---------------------------------------------------------------------------------------------
# The dry run
# ---------------------------------------------------------------------------------------------

def dry_run_lines(spec, runs: list[dict], out_dir: Path | str, plan=None, source: str = "<spec>") -> list[str]:
    """What `medscale sweep --dry-run` prints for an adaptive spec: the pool, the first batch (the initial design:
    N, D and cost of each) and the planned compute. `plan`: pipeline.estimate_plan of `runs`, for time estimates."""
    grid = spec.grid
    pool = Pool.of(runs)
    init = check_pool(spec, pool, source)
    rate = plan.peak_flops * plan.efficiency if plan is not None else 0.0  # FLOP/s the plan assumes on this machine
    kind = (f"{len(grid.params)} sizes x {len(grid.tokens)} token counts" if grid.tokens is not None else
            f"{len(grid.compute)} compute budgets x {len(grid.params)} sizes"
            + (f", D/N in [{grid.tokens_per_param[0]:g}, {grid.tokens_per_param[1]:g}]"
               if grid.tokens_per_param else ""))
    seeds = f" x {len(spec.seeds)} seeds" if len(spec.seeds) > 1 else ""
    dc = pool.data_constrained
    fractions = (f" x {len(spec.dataset.fractions())} training fractions (a data-constrained pool: the law fitted "
                 f"is the data-constrained one)") if dc else ""
    lines = [f"adaptive sweep {spec.name}: a pool of {len(pool)} candidate runs ({kind}{seeds}{fractions}); target: "
             f"{target_text(grid, pool)}",
             f"first batch: the initial design, {init.size} runs spread over N and D (N as model.param_count "
             f"{spec.model.param_count} counts it; cost in FLOPs, full count as the scheduler counts"
             + ("; U: unique training tokens, epochs = D / U" if dc else "") + "):"]
    header = f"  {'run':<24} {'N':>10} {'D':>12} {'D/N':>7}" + (f" {'U':>12} {'epochs':>7}" if dc else "") \
        + f" {'cost':>10} {'est. time':>10}"
    lines.append(header)
    for r in init:
        t = pool.full[r] / rate if rate > 0 else None
        repeat = f" {pool.unique[r]:>12,.0f} {pool.tokens[r] / pool.unique[r]:>7.2f}" if dc else ""
        lines.append(f"  {pool.ids[r]:<24} {pool.params[r]:>10,.0f} {pool.tokens[r]:>12,.0f} "
                     f"{pool.tokens[r] / pool.params[r]:>7.1f}{repeat} {pool.full[r]:>10.3g} "
                     f"{'-' if t is None else f'{t:.1f}s':>10}")
    first = float(pool.full[init].sum())
    whole = pool.planned_flops()
    scratch = float(pool.full.sum())
    wsd = f" (under WSD: trunks whole, branches their cooldown; {scratch:.3g} with every run from scratch)" \
        if scratch > whole * (1 + 1e-9) else ""
    stop = f", or until the target's 95% interval is narrower than {grid.stop_width:g} of its value" \
        if grid.stop_width is not None else ""
    rule = at_bound_of(grid.scoring, grid.at_bound)
    fallback = f"; at_bound {rule}: while the fitted law has E, alpha or beta at its bound" if rule != "none" else ""
    lines += [f"planned compute: grid.budget {grid.budget:.3g} FLOPs, {grid.budget / whole:.0%} of the "
              f"{whole:.3g} FLOPs the whole pool would cost{wsd}",
              f"  the initial design spends {first:.3g} FLOPs ({first / grid.budget:.0%} of the budget); then batches "
              f"of {grid.batch} run(s), each chosen by the expected reduction of the target's error per FLOP "
              f"({grid.scoring} scoring{fallback}), "
              f"until the budget is spent{stop}"]
    if grid.budget >= whole:
        lines.append("  warning: grid.budget covers the whole pool: the sweep may train every candidate (a "
                     "ladder or isoflop grid would do the same with no refits)")
    if rate > 0:
        lines.append(f"estimated time: {first / rate / 60:.1f} device-minutes for the first batch, at most "
                     f"{min(grid.budget, scratch) / rate / 60:.1f} for the whole budget, at {plan.efficiency:.1%} "
                     f"({plan.efficiency_source}) of the peak {plan.peak_flops / 1e9:.1f} GFLOP/s ({plan.peak_source})")
    records = History(out_dir, spec.name).decisions()
    if records:
        lines.append(f"{out_dir}: {len(records)} decision(s) recorded, {records[-1]['spent_after']:.3g} FLOPs spent; "
                     "a rerun replays them and goes on from there")
    return lines
