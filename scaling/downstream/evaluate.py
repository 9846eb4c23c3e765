"""Downstream evaluation of every model in a run store: `evaluate_store(store_root, spec)`.

For each task (data/tasks.py) the labelled samples are split once, the same way for every model:
the fit pool comes from `fit_splits` subjects (default train), the test set from `test_splits` subjects
(default held_out); with `temporal_cutoff`, fit samples must predict before the cutoff and test samples
at or after it. Each side is capped at `max_samples` rows, taking whole subjects in a fixed random order.
A label budget k draws k examples per class (binary; k rows for regression) from the fit pool with the
row's seed (EHRSHOT-style few-shot), 'all' takes the whole pool.

Modes (one result row per metric):
  probe      logistic/ridge regression on the frozen pooled representation (decoder: last position,
             encoder: mean over positions; models/rollout.pooled)
  finetune   all weights + a linear head trained on the labels (scaling/downstream/model.py)
  scratch    the same architecture and recipe from a random initialisation
  zero_shot  decoders only: K rolled-out futures per test sample (scaling/downstream/zero_shot.py);
             uses no labels (label_budget '0'); also reports `censored` (trajectories cut by the
             token horizon before their window closed)
  lightgbm   LightGBM on age, sex and code counts at the prediction time (size-independent)
  ceiling    the simulator's true probability (expected value) scored like a model: the best achievable
Every row also carries `ceiling` (the true probability's metric on the very same test rows) and `gap`
(how much worse than it, positive = worse), so each result shows its distance to the best achievable.
Intervals: percentile bootstrap over subjects (analysis/metrics.py).

Results: <store_root>/downstream.csv and .parquet, long format, rewritten atomically after every run
(medscale.atomic). Each row's `labels` names its label source: the label folder (spec `labels:`), empty for
task files; a task evaluated on two sources is two tasks to the analysis (`downstream_data` names them
"<task> [<source>]"), never one pooled result. Size-independent rows (lightgbm, ceiling) have run_id 'baseline:<dataset_id>' and no
params/compute, which is how analysis/saturation.fit_saturation tells baselines apart. An evaluation already
is an idempotent step named by the hash of (run_id, task, mode, label_budget, seed) and the spec fields that
change its result (SHARED_IDENTITY, MODE_IDENTITY): a finished one is not recomputed, so a rerun resumes.
`saturation_input(df)` reduces the table to what `fit_saturation` / `write_report(downstream=...)` expect:
one label budget, seeds averaged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from medscale.analysis.downstream_data import DownstreamData
from medscale.analysis.metrics import evaluate, gap_to_ceiling, resample_id
from medscale.atomic import read_json, write_json, write_with
from medscale.scaling.downstream.baselines import lightgbm_predict, probe_predict
from medscale.scaling.downstream.predictions import write_predictions
from medscale.scaling.downstream.spec import DownstreamSpec
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.step_dir import StepDir, pick, step_name
from medscale.scaling.sweep.store import RunDir, RunStore
from medscale.scaling.sweep.store_format import rows_with_labels

COLUMNS = ["run_id", "objective", "params", "compute", "task", "mode", "label_budget", "seed", "metric", "value",
           "low", "high", "ceiling", "gap", "n_fit", "n_test", "protocol", "labels"]
KEY = ["run_id", "task", "mode", "label_budget", "seed", "protocol", "labels"]
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------

@dataclass
class TaskData:
    task: object                # data.tasks.Task
    fit: pd.DataFrame           # label rows of the fit pool
    test: pd.DataFrame
    events: object              # polars frame of the sampled subjects' events (shared by histories/counts)
    meds: str
    part_of_test: np.ndarray | None = None   # union tasks: which part each test row came from
    groups: dict | None = None               # test rows' subgroups: {"sex": [...], "age": [...]}

    def y(self, rows: pd.DataFrame) -> np.ndarray:
        from medscale.data.tasks import label_values

        return label_values(rows, self.task)


def _cap_by_subject(rows: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    subjects = rows["subject_id"].unique()
    order = np.random.default_rng(seed).permutation(subjects)
    counts = rows.groupby("subject_id").size().reindex(order).to_numpy()
    n_keep = max(1, int(np.searchsorted(np.cumsum(counts), max_rows, side="right")))
    keep = set(order[:n_keep].tolist())
    return rows[rows["subject_id"].isin(keep)].reset_index(drop=True)


def prepare_task(meds: str, name: str, spec: DownstreamSpec) -> TaskData:
    from medscale.data.history import subject_events
    from medscale.data.tasks import extract_labels, load_task

    if spec.labels:   # a label folder (MEDS label schema) instead of a task file
        from medscale.scaling.downstream.labels_io import label_task

        task, labels = label_task(meds, spec.labels, name)
    else:
        task = load_task(name, spec.predicates)
        labels = extract_labels(meds, task)
    fit = labels[labels["split"].isin(spec.fit_splits)]
    test = labels[labels["split"].isin(spec.test_splits)]
    if spec.temporal_cutoff:
        cutoff = pd.Timestamp(spec.temporal_cutoff)
        fit, test = fit[fit["prediction_time"] < cutoff], test[test["prediction_time"] >= cutoff]
    _need_fit_and_test(name, task, labels, fit, test, spec)
    fit, test = _cap_by_subject(fit, spec.max_samples, 1), _cap_by_subject(test, spec.max_samples, 2)
    _need_both_classes(name, task, fit, test)
    events = subject_events(meds, np.r_[fit["subject_id"].to_numpy(), test["subject_id"].to_numpy()])
    return TaskData(task, fit, test, events, meds, groups=subgroups_of(meds, test, events))


def _need_fit_and_test(name: str, task, labels: pd.DataFrame, fit: pd.DataFrame, test: pd.DataFrame,
                       spec: DownstreamSpec) -> None:
    """Refuse a task whose labels leave the fit pool or the test set empty, naming the splits they cover."""
    if not (fit.empty or test.empty):
        return
    covered = ", ".join(f"{split} {n:,}" for split, n in labels["split"].value_counts().items()) or "none"
    cutoff = f" and temporal_cutoff {spec.temporal_cutoff}" if spec.temporal_cutoff else ""
    raise UserError(f"task {name} ({task.path}): {len(fit):,} fit samples (fit_splits {', '.join(spec.fit_splits)}) "
                    f"and {len(test):,} test samples (test_splits {', '.join(spec.test_splits)}{cutoff}); its labels "
                    f"cover the splits {covered}. Both sides are needed: give labels for subjects of the missing "
                    "split(s), or set fit_splits/test_splits (or temporal_cutoff) in the downstream spec to what the "
                    "labels cover.")


def _need_both_classes(name: str, task, fit: pd.DataFrame, test: pd.DataFrame) -> None:
    """Refuse a binary task whose fit pool or test set holds one class: nothing could be fitted or scored
    (every mode would be skipped, or its AUROC undefined)."""
    from medscale.data.tasks import label_values

    if task.kind != "binary":
        return
    counts = {side: np.bincount(label_values(rows, task).astype(int), minlength=2)
              for side, rows in (("fit pool", fit), ("test set", test))}
    if all((c > 0).all() for c in counts.values()):
        return
    shown = "; ".join(f"{side}: {c[0]:,} false, {c[1]:,} true" for side, c in counts.items())
    raise UserError(f"task {name} ({task.path}): one class only ({shown}); a binary task needs both classes in "
                    "the fit pool and in the test set to fit a model and score it (AUROC). Check the labels' "
                    "boolean_value, or leave the task out (tasks: in the downstream spec).")


AGE_BANDS = ((0, 45, "<45"), (45, 65, "45-64"), (65, 200, "65+"))


def subgroups_of(meds: str, rows: pd.DataFrame, events) -> dict[str, np.ndarray]:
    """Sex and age band at the prediction time of each row (data/history.count_features' age and sex)."""
    from medscale.data.history import count_features

    X = count_features(meds, rows, [], events=events).X_NxF
    age, male, female = X[:, 0], X[:, 1] > 0, X[:, 2] > 0
    sex = np.where(male, "M", np.where(female, "F", ""))
    band = np.full(len(rows), "", dtype=object)
    for lo, hi, name in AGE_BANDS:
        band[(age >= lo) & (age < hi)] = name
    return {"sex": sex.astype(object), "age": band}


def budget_rows(data: TaskData, budget, seed: int) -> np.ndarray | None:
    """Indices into data.fit for a label budget (k per class, or k rows for regression); None if a class
    is missing."""
    n = len(data.fit)
    if budget == "all":
        if data.task.kind == "binary" and np.unique(data.y(data.fit)).size < 2:
            return None
        return np.arange(n)
    rng = np.random.default_rng([seed, int(budget)])
    if data.task.kind == "regression":
        return np.sort(rng.choice(n, size=min(n, int(budget)), replace=False))
    y = data.y(data.fit)
    picks = []
    for c in (0.0, 1.0):
        idx = np.flatnonzero(y == c)
        if idx.size == 0:
            return None
        picks.append(rng.choice(idx, size=min(idx.size, int(budget)), replace=False))
    return np.sort(np.concatenate(picks))


# ------------------------------------------------------------------------------------------------
# Results table
# ------------------------------------------------------------------------------------------------

def _paths(root: Path) -> tuple[Path, Path]:
    return root / "downstream.csv", root / "downstream.parquet"


def read_downstream(store_root) -> pd.DataFrame:
    csv, _ = _paths(Path(store_root))
    if not csv.exists():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(csv, dtype={"run_id": str, "label_budget": str, "protocol": str, "task": str, "mode": str,
                                    "labels": str})
    return frame.assign(labels=frame["labels"].fillna("") if "labels" in frame else "")


def with_sources(frame: pd.DataFrame, mixed: set[str]) -> pd.DataFrame:
    """The frame with each task of `mixed` (results from more than one label source) renamed
    "<task> [<source>]", so that analysis (saturation, the report, forecasts) keeps the sources apart."""
    if not mixed or frame.empty:
        return frame
    frame = frame.copy()
    rows = frame["task"].isin(mixed)
    frame.loc[rows, "task"] = [f"{t} [{_source_name(src)}]" for t, src in zip(frame.loc[rows, "task"],
                                                                           frame.loc[rows, "labels"])]
    return frame


def mixed_sources(frame: pd.DataFrame) -> dict[str, list[str]]:
    """task -> its label sources, for the tasks whose results come from more than one (the column `labels`:
    the label folder's path, or empty for a task file)."""
    if frame.empty or "labels" not in frame:
        return {}
    sources = frame.assign(labels=frame["labels"].fillna("")).groupby("task")["labels"].unique()
    return {task: sorted(map(_source_name, s)) for task, s in sources.items() if len(s) > 1}


def _source_name(labels) -> str:
    return labels if isinstance(labels, str) and labels else "task file"


def _write(root: Path, frame: pd.DataFrame) -> None:
    csv, parquet = _paths(root)
    frame = frame[COLUMNS]
    write_with(parquet, lambda p: frame.to_parquet(p, index=False))
    write_with(csv, lambda p: frame.to_csv(p, index=False))


def saturation_input(downstream: pd.DataFrame, label_budget: str = "all") -> pd.DataFrame:
    """Rows for analysis.saturation.fit_saturation / analysis.report.write_report(downstream=...): one label
    budget (zero-shot, which uses none, is kept too), seeds averaged per (run, task, mode, metric)."""
    d = downstream.copy()
    d["label_budget"] = d["label_budget"].astype(str)
    d = d[(d["label_budget"] == str(label_budget)) | (d["mode"] == "zero_shot")]
    keys = ["run_id", "objective", "params", "compute", "task", "mode", "metric", "protocol"]
    return (d.groupby(keys, dropna=False, as_index=False)[["value", "low", "high", "ceiling", "gap"]].mean())


BOOTSTRAP_SEED = 0   # one set of subject resamples per test set, for every model and seed: paired draws
SUBGROUP_MIN_ROWS = 30


def _result_rows(meta: dict, data: TaskData, rows: pd.DataFrame, score: np.ndarray, *, mode: str, budget, seed: int,
                 n_fit: int, spec: DownstreamSpec, groups: dict | None = None) -> tuple[list[dict], dict]:
    """(result rows, extras): extras hold the paired bootstrap draws of each metric ({"resample", "draws"})
    and the metrics on each subgroup of the test rows ("subgroups")."""
    kind = data.task.kind
    y = data.y(rows)
    subjects = rows["subject_id"].to_numpy()
    got, draws = evaluate(y, score, subjects, kind=kind, n_boot=spec.n_boot, seed=BOOTSTRAP_SEED, return_draws=True)
    truth = rows["truth"].to_numpy(dtype=np.float64)
    has_truth = np.all(np.isfinite(truth))
    best = evaluate(y, truth, subjects, kind=kind, n_boot=0) if has_truth else {}
    base = {**meta, "task": data.task.name, "mode": mode, "label_budget": str(budget), "seed": seed,
            "n_fit": n_fit, "n_test": len(rows), "protocol": spec.protocol, "labels": spec.labels or ""}
    out = []
    for metric, (value, low, high) in got.items():
        ceiling = best.get(metric, (np.nan,))[0]
        out.append({**base, "metric": metric, "value": value, "low": low, "high": high, "ceiling": ceiling,
                    "gap": gap_to_ceiling(metric, value, ceiling)})
    extras = {"resample": resample_id(subjects, spec.n_boot, BOOTSTRAP_SEED),
              "draws": {m: [None if not np.isfinite(v) else float(v) for v in d] for m, d in draws.items()},
              "subgroups": []}
    groups = data.groups if groups is None else groups
    for kind_name, labels in (groups or {}).items():
        labels = np.asarray(labels)[: len(rows)]
        for g in sorted(set(labels) - {""}):
            sel = labels == g
            if sel.sum() < SUBGROUP_MIN_ROWS or (kind == "binary" and np.unique(y[sel]).size < 2):
                continue
            sub = evaluate(y[sel], score[sel], subjects[sel], kind=kind, n_boot=spec.n_boot, seed=BOOTSTRAP_SEED)
            sub_best = evaluate(y[sel], truth[sel], subjects[sel], kind=kind, n_boot=0) if has_truth else {}
            for metric, (value, low, high) in sub.items():
                extras["subgroups"].append({**base, "kind": kind_name, "group": str(g), "n": int(sel.sum()),
                                            "metric": metric, "value": value, "low": low, "high": high,
                                            "ceiling": sub_best.get(metric, (np.nan,))[0]})
    return out, extras


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------

# The fields of a downstream spec that change an evaluation's result, per mode (the step's identity).
SHARED_IDENTITY = ("max_samples", "fit_splits", "test_splits", "temporal_cutoff", "n_boot", "meds", "labels",
                   "predicates")
# bumped when an evaluation's recipe changes without a spec field changing (2: paired draws, subgroups,
# LP-FT fine-tuning, zero-shot rollouts until the window closes with a K sweep)
EVAL_VERSION = 2
MODE_IDENTITY = {"finetune": ("finetune",), "scratch": ("finetune",), "zero_shot": ("zero_shot",)}


class _Evaluator:
    """Each (run, task, mode, label budget, seed) evaluation is an idempotent step (medscale.scaling.sweep.step_dir)
    `<root>/downstream/eval-<hash>/` holding its rows; downstream.csv/.parquet compile the finished ones."""

    def __init__(self, root: Path, spec: DownstreamSpec, progress: Progress | None):
        self.root, self.spec = root, spec
        self.progress = progress or (lambda stage, done, total: None)
        self.steps_root = root / "downstream"
        legacy = _paths(root)[0]
        if legacy.exists() and not self.steps_root.exists():
            raise UserError(f"{legacy}: downstream results from an older medscale (no downstream/ folder); "
                            f"move the file aside (mv {legacy} {legacy.with_suffix('.legacy.csv')}) and rerun to "
                            "recompute them as resumable steps")
        self.table = read_downstream(root)
        self.changed = False

    def step(self, run_id: str, task: str, mode: str, budget, seed: int) -> StepDir:
        dumped = self.spec.model_dump()
        identity = {"run_id": run_id, "task": task, "mode": mode, "label_budget": str(budget), "seed": int(seed),
                    "version": EVAL_VERSION, **pick(dumped, SHARED_IDENTITY + MODE_IDENTITY.get(mode, ()))}
        return StepDir(self.steps_root / step_name("eval", identity)), identity

    def todo(self, run_id: str, task: str, mode: str, budget, seed: int) -> bool:
        return mode in self.spec.modes and self.step(run_id, task, mode, budget, seed)[0].state() != "done"

    def add(self, result: tuple[list[dict], dict], predictions: tuple | None = None) -> None:
        """Record a finished evaluation: `result` = (rows, extras) from _result_rows (extras: paired draws and
        subgroup metrics); `predictions` = (label rows, scores, kind) are written in meds-evaluation's schema
        (scaling/downstream/predictions.py) before the step is marked done."""
        rows, extras = result
        first = rows[0]
        step, identity = self.step(first["run_id"], first["task"], first["mode"], first["label_budget"], first["seed"])
        if predictions is not None:
            write_predictions(self.root, rows, *predictions)
        write_json(step.path / "identity.json", identity)
        write_json(step.path / "draws.json", {"resample": extras["resample"], "draws": extras["draws"]})
        write_json(step.path / "subgroups.json", extras["subgroups"])
        write_json(step.path / "rows.json", rows)
        step.set_status("done", rows=len(rows))
        self.changed = True

    def flush(self) -> None:
        if not self.changed:
            return
        self.table = compile_downstream(self.root)
        _write(self.root, self.table)
        sub = compile_subgroups(self.root)
        write_with(self.root / "downstream_subgroups.csv", lambda p: sub.to_csv(p, index=False))
        self.changed = False


def compile_downstream(store_root: Path | str) -> pd.DataFrame:
    """The rows of every finished evaluation step under `<store_root>/downstream/`, in a stable order."""
    rows = [r for folder in _done_steps(store_root) for r in rows_with_labels(folder, "rows.json")]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["label_budget"] = frame["label_budget"].astype(str)
    return frame


SUBGROUP_COLUMNS = ["run_id", "objective", "params", "compute", "task", "mode", "label_budget", "seed", "kind",
                    "group", "n", "metric", "value", "low", "high", "ceiling", "protocol", "labels"]


def _done_steps(store_root):
    for folder in sorted((Path(store_root) / "downstream").glob("eval-*")):
        if StepDir(folder).state() == "done":
            yield folder


def compile_subgroups(store_root: Path | str) -> pd.DataFrame:
    """Every finished evaluation's metrics per subgroup (sex, age band) of its test rows."""
    rows = [r for folder in _done_steps(store_root) for r in rows_with_labels(folder, "subgroups.json")]
    frame = pd.DataFrame(rows, columns=SUBGROUP_COLUMNS)
    frame["label_budget"] = frame["label_budget"].astype(str)
    return frame


def read_draws(store_root: Path | str, metric: str = "auroc", label_budget: str = "all") -> pd.DataFrame:
    """The paired bootstrap draws of one metric, long: run_id, task, mode, metric, seed, draw, value, resample
    (one label budget; zero-shot, which uses none, is kept too). Draws with one resample id were scored on the
    same resampled test subjects (analysis/paired.py)."""
    parts = []
    for folder in _done_steps(store_root):
        ident = read_json(folder / "identity.json") or {}
        if str(ident.get("label_budget")) != str(label_budget) and ident.get("mode") != "zero_shot":
            continue
        got = read_json(folder / "draws.json")
        values = (got or {}).get("draws", {}).get(metric)
        if not values:
            continue
        v = np.array([np.nan if x is None else x for x in values], dtype=float)
        parts.append(pd.DataFrame({"run_id": ident["run_id"], "task": ident["task"], "mode": ident["mode"],
                                   "metric": metric, "seed": int(ident["seed"]), "draw": np.arange(v.size),
                                   "value": v, "resample": got["resample"], "labels": ident.get("labels") or ""}))
    cols = ["run_id", "task", "mode", "metric", "seed", "draw", "value", "resample", "labels"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def downstream_data(store_root: Path | str, table: pd.DataFrame | None = None, label_budget: str = "all"):
    """Everything the report's downstream sections read (analysis.downstream_data.DownstreamData): the
    results at one label budget with seeds averaged, the paired draws of AUROC and the subgroup metrics."""
    table = compile_downstream(store_root) if table is None else table
    mixed = set(mixed_sources(table))   # a task evaluated on two label sources is two tasks to the analysis
    sub = compile_subgroups(store_root)
    sub = with_sources(sub[sub["label_budget"].astype(str) == str(label_budget)], mixed)
    return DownstreamData(results=saturation_input(with_sources(table, mixed), label_budget),
                          draws=with_sources(read_draws(store_root, "auroc", label_budget), mixed), subgroups=sub)


def _baselines(ev: _Evaluator, dataset: str, tasks: dict[str, TaskData], tokenizer) -> None:
    from medscale.data.history import count_features

    spec = ev.spec
    meta = {"run_id": f"baseline:{dataset}", "objective": None, "params": np.nan, "compute": np.nan}
    codes = sorted(tokenizer.codes, key=lambda c: -tokenizer.code_counts.get(c, 0))[:256]
    for name, data in tasks.items():
        if ev.todo(meta["run_id"], name, "ceiling", "all", 0) and np.all(np.isfinite(data.test["truth"])):
            ev.add(_result_rows(meta, data, data.test, data.test["truth"].to_numpy(), mode="ceiling", budget="all",
                                seed=0, n_fit=0, spec=spec), (data.test, data.test["truth"].to_numpy(), data.task.kind))
        pending = [(b, s) for b in spec.label_budgets for s in spec.seeds if ev.todo(meta["run_id"], name, "lightgbm", b, s)]
        if not pending:
            continue
        X_fit = count_features(data.meds, data.fit, codes, events=data.events).X_NxF
        X_test = count_features(data.meds, data.test, codes, events=data.events).X_NxF
        y_fit = data.y(data.fit)
        for budget, seed in pending:
            idx = budget_rows(data, budget, seed)
            if idx is None:
                continue
            score = lightgbm_predict(X_fit[idx], y_fit[idx], X_test, data.task.kind, seed)
            ev.add(_result_rows(meta, data, data.test, score, mode="lightgbm", budget=budget, seed=seed,
                                n_fit=len(idx), spec=spec), (data.test, score, data.task.kind))
    ev.flush()


def _evaluate_run(ev: _Evaluator, run: RunDir, tasks: dict[str, TaskData], tokenizer, finetune_ok: bool,
                  history_cache: dict, zero_shot_ok: bool = True) -> None:
    from medscale.data.history import build_histories
    from medscale.scaling.downstream.model import (FinetuneRecipe, embed, finetune_and_predict, fresh_params,
                                                   load_run_model)
    from medscale.scaling.downstream.zero_shot import tokens_per_event

    spec = ev.spec
    rid = run.run_id
    wanted = [(n, m, b, s) for n in tasks for m in ("probe", "finetune", "scratch") for b in spec.label_budgets
              for s in spec.seeds if ev.todo(rid, n, m, b, s)]
    wanted += [(n, "zero_shot", 0, s) for n in tasks for s in spec.seeds
               if zero_shot_ok and ev.todo(rid, n, "zero_shot", 0, s)]
    if not wanted:
        return
    model = load_run_model(run)
    meta = {"run_id": rid, "objective": model.objective, "params": model.n_params, "compute": model.compute}
    recipe = FinetuneRecipe(spec.finetune.steps, spec.finetune.lr, spec.finetune.batch_size)
    for name, data in tasks.items():
        key = (name, model.cfg.max_len)
        if key not in history_cache:
            history_cache[key] = (build_histories(data.meds, data.fit, tokenizer, model.cfg.max_len, events=data.events),
                                  build_histories(data.meds, data.test, tokenizer, model.cfg.max_len, events=data.events))
        h_fit, h_test = history_cache[key]
        y_fit = data.y(data.fit)
        kind = data.task.kind
        todo = [w for w in wanted if w[0] == name]
        Z_fit, probe_scores = None, {}   # the probe's representations and predictions, reused by LP-FT
        if any(m == "probe" for _, m, _, _ in todo):
            Z_fit, Z_test = embed(model, h_fit.tokens_NxL, h_fit.lengths_N), embed(model, h_test.tokens_NxL, h_test.lengths_N)
        for _, mode, budget, seed in todo:
            if mode in ("finetune", "scratch") and not finetune_ok:
                continue
            if mode == "zero_shot":
                if not model.cfg.causal or kind != "binary" or name not in (spec.zero_shot.tasks or [name]):
                    continue
                if "per_event" not in history_cache:
                    history_cache["per_event"] = tokens_per_event(model.token_dir, tokenizer)
                ev.add(*_zero_shot(meta, data, h_test, model, tokenizer, spec, seed, history_cache["per_event"]))
                continue
            idx = budget_rows(data, budget, seed)
            if idx is None:
                continue
            if mode == "probe":
                score = probe_predict(Z_fit[idx], y_fit[idx], Z_test, kind, seed)
                probe_scores[(budget, seed)] = score
            else:
                pretrained = mode == "finetune"
                graphdef, params = ((model.graphdef, model.params) if pretrained
                                    else fresh_params(model.cfg, 1000 + seed))
                score = finetune_and_predict(graphdef, params, model.cfg, kind, h_fit.tokens_NxL[idx],
                                             h_fit.lengths_N[idx], y_fit[idx], h_test.tokens_NxL, h_test.lengths_N,
                                             recipe, seed, groups=data.fit["subject_id"].to_numpy()[idx],
                                             linear_probe_first=pretrained,
                                             Z_fit=Z_fit[idx] if pretrained and Z_fit is not None else None,
                                             probe_score=probe_scores.get((budget, seed)) if pretrained else None)
            ev.add(_result_rows(meta, data, data.test, score, mode=mode, budget=budget, seed=seed, n_fit=len(idx),
                                spec=spec), (data.test, score, kind))
    ev.flush()


def _zero_shot(meta: dict, data: TaskData, h_test, model, tokenizer, spec: DownstreamSpec, seed: int,
               per_event: float) -> tuple[tuple[list[dict], dict], tuple]:
    """K rollouts per test row (the first zero_shot.max_samples) until each window closes: ((rows, extras),
    predictions) for _Evaluator.add; rows for the metrics at K plus the K sweep (`auroc_k<k>`), the censored
    fraction and the rollout budget and cap."""
    from medscale.scaling.downstream.zero_shot import rollout_budget, window_events, zero_shot_scores

    zs = spec.zero_shot
    rows = data.test.iloc[: zs.max_samples]
    n = len(rows)
    ks = tuple(sorted({k for k in zs.k_sweep if k <= zs.k} | {zs.k}))
    scores, cens = np.zeros(n), np.zeros(n)
    by_k = {k: np.zeros(n) for k in ks}
    budgets = []
    parts = [(p, np.flatnonzero(_part_of_rows(data, data.test)[:n] == p.name)) for p in data.task.parts] \
        if data.task.parts else [(data.task, np.arange(n))]
    for part, sel in parts:
        if not sel.size:
            continue
        rule = part.label_rule()
        held = window_events(data.events, data.fit, rule) * per_event
        budget = rollout_budget(held, cap=zs.max_new_tokens, factor=zs.window_factor)
        budgets.append(budget)
        p, c, pk = zero_shot_scores(model, h_test.tokens_NxL[sel], h_test.lengths_N[sel], rule, tokenizer,
                                    k=zs.k, max_new=budget.tokens, seed=seed, temperature=zs.temperature, ks=ks,
                                    batch_prompts=zs.batch_prompts)
        scores[sel], cens[sel] = p, c
        for k in ks:
            by_k[k][sel] = pk[k]
    out, extras = _result_rows(meta, data, rows, scores, mode="zero_shot", budget=0, seed=seed, n_fit=0, spec=spec)
    extra = {"low": np.nan, "high": np.nan, "ceiling": np.nan, "gap": np.nan}

    y = data.y(rows)
    for k in ks:
        v, lo, hi = evaluate(y, by_k[k], rows["subject_id"].to_numpy(), metrics=("auroc",), n_boot=spec.n_boot,
                             seed=BOOTSTRAP_SEED)["auroc"]
        out.append({**out[0], **extra, "metric": f"auroc_k{k}", "value": v, "low": lo, "high": hi})
    out.append({**out[0], **extra, "metric": "censored", "value": float(cens.mean())})
    out.append({**out[0], **extra, "metric": "rollout_tokens", "value": float(max(b.tokens for b in budgets))})
    out.append({**out[0], **extra, "metric": "rollout_cap", "value": float(zs.max_new_tokens)})
    out.append({**out[0], **extra, "metric": "rollout_capped", "value": float(any(b.capped for b in budgets))})
    out.append({**out[0], **extra, "metric": "rollout_wanted", "value": float(max(b.wanted for b in budgets))})
    return (out, extras), (rows, scores, "binary")


def _part_of_rows(data: TaskData, rows: pd.DataFrame) -> np.ndarray:
    """Which part of a union task each row came from (the first part listing its (subject, time))."""
    from medscale.data.tasks import extract_labels

    if data.part_of_test is not None:
        return data.part_of_test[: len(rows)]
    out = np.full(len(rows), "", dtype=object)
    keys = list(zip(rows["subject_id"], rows["prediction_time"]))
    for part in reversed(data.task.parts):
        labels = extract_labels(data.meds, part)
        own = set(zip(labels["subject_id"], labels["prediction_time"]))
        for i, k in enumerate(keys):
            if k in own:
                out[i] = part.name
    if len(rows) == len(data.test):
        data.part_of_test = out
    return out


def _spread(runs: list[RunDir], n: int | None) -> set[str]:
    """Run ids of at most n runs spread evenly over sizes (smallest and largest first)."""
    sized = sorted(runs, key=lambda r: (r.config()["model"]["d_model"] * r.config()["model"]["n_layers"], r.run_id))
    if n is None or n >= len(sized):
        return {r.run_id for r in sized}
    pick = np.unique(np.round(np.linspace(0, len(sized) - 1, n)).astype(int))
    return {sized[i].run_id for i in pick}


def evaluate_store(store_root, spec: DownstreamSpec, *, runs=None, progress: Progress | None = None) -> pd.DataFrame:
    """Evaluate every finished run of the store (or the run ids in `runs`) on the spec's tasks; returns the
    whole downstream table (old rows and new). See the module doc."""
    from medscale.data.tokenizer import Tokenizer

    root = Path(store_root)
    store = RunStore(root)
    all_runs = [r for r in store.runs() if r.state() == "done" and (runs is None or r.run_id in set(runs))]
    ev = _Evaluator(root, spec, progress)
    by_tokens: dict[str, list[RunDir]] = {}
    for r in all_runs:
        by_tokens.setdefault(r.config()["data"]["token_dir"], []).append(r)
    # two counters, each reported up to its total: the datasets whose labels and baselines are ready, the runs
    done_runs = 0
    for n_data, (token_dir, group) in enumerate(by_tokens.items()):
        manifest = json.loads((Path(token_dir) / "manifest.json").read_text())
        meds = spec.meds or manifest["meds_dir"]
        tokenizer = Tokenizer.load(token_dir)
        dataset = group[0].config()["data"].get("dataset_id") or Path(token_dir).parent.name
        tasks = {name: prepare_task(meds, name, spec) for name in spec.tasks}
        _baselines(ev, dataset, tasks, tokenizer)
        ev.progress("downstream: labels and baselines", n_data + 1, len(by_tokens))
        ev.progress("downstream: runs", done_runs, len(all_runs))
        finetune_ids = _spread(group, spec.finetune.max_runs)
        zero_shot_ids = _spread([r for r in group if r.config()["objective"] == "decoder"], spec.zero_shot.max_runs)
        history_cache: dict = {}
        for run in sorted(group, key=lambda r: r.run_id):
            _evaluate_run(ev, run, tasks, tokenizer, run.run_id in finetune_ids, history_cache,
                          zero_shot_ok=run.run_id in zero_shot_ids)
            done_runs += 1
            ev.progress("downstream: runs", done_runs, len(all_runs))
    return ev.table
