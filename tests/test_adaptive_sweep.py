"""Adaptive sweeps (issue 32, item 1): `grid: {mode: adaptive}` is validated before any compute with errors that
name the key; the dry run shows the pool, the first batch and the planned compute; the loop records each decision
before its runs start, replays recorded decisions on a rerun (a killed sweep resumes with the same choices, a
finished one trains nothing), and stops at the budget or the stopping width.

The loop's logic is tested on a synthetic law with a fake trainer (fast); one slow test runs the real thing from
the CLI at the size of the other sweep tests."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.pipeline import DRY_RUN_VOCAB
from medscale.scaling.sweep.adaptive import History, Pool, adaptive_loop, check_pool, identity
from medscale.scaling.sweep.spec import SpecError, expand, grid_size, load_spec, parse_spec

MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]
STEP_TOKENS = 8 * 32  # tiny_spec: batch 8 x seq_len 32


def _env() -> dict:
    return child_env()


def medscale(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(MEDSCALE + [str(a) for a in args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


SHAPES = [{"d_model": 8, "n_layers": 1, "n_heads": 1}, {"d_model": 16, "n_layers": 2, "n_heads": 1},
          {"d_model": 32, "n_layers": 2, "n_heads": 2}]


def adaptive_spec(meds: Path, **grid) -> dict:
    """tiny_spec with an adaptive ladder pool of 3 sizes x 3 token counts (20, 40 and 80 steps of 8 x 32)."""
    spec = tiny_spec(meds)
    spec["name"] = "tiny-adaptive"
    spec["grid"] = {"mode": "adaptive", "params": SHAPES, "tokens": [n * STEP_TOKENS for n in (20, 40, 80)],
                    "budget": "1e12", "target": {"n_opt_at": "1e11"}, "batch": 1, "initial": 6, "n_boot": 20,
                    **grid}
    return spec


# ---------------------------------------------------------------------------------------------
# Validation: exit 2 before compute, the message names the key
# ---------------------------------------------------------------------------------------------

def _with(grid_edit=None, top_edit=None):
    def make(meds):
        spec = adaptive_spec(meds)
        if grid_edit:
            grid_edit(spec["grid"])
        if top_edit:
            top_edit(spec)
        return spec
    return make


INVALID = [
    ("no pool axis", _with(lambda g: g.pop("tokens")), r"grid: give exactly one of grid.tokens .* or grid.compute"),
    ("both pool axes", _with(lambda g: g.update(compute=["1e10"])), r"grid: give exactly one of grid.tokens"),
    ("no budget", _with(lambda g: g.pop("budget")), r"grid.budget: required key is missing"),
    ("negative budget", _with(lambda g: g.update(budget=-5)), r"grid.budget: must be a positive number"),
    ("no target", _with(lambda g: g.pop("target")), r"grid.target: required key is missing"),
    ("two targets", _with(lambda g: g.update(target={"n_opt_at": 1e11, "planned": [{"params": 1e4, "tokens": 1e6}]})),
     r"grid.target: give exactly one of grid.target.n_opt_at .* or grid.target.planned"),
    ("misspelt key", _with(lambda g: g.update(budgte=1e12)), r"grid.budgte: unknown key"),
    ("batch 0", _with(lambda g: g.update(batch=0)), r"grid.batch: Input should be greater than or equal to 1"),
    ("initial too small", _with(lambda g: g.update(initial=3)),
     r"grid.initial: Input should be greater than or equal to 6"),
    ("two sizes", _with(lambda g: g.update(params=SHAPES[:2])), r"grid.params: List should have at least 3 items"),
    ("window on a ladder pool", _with(lambda g: g.update(tokens_per_param=[1, 100])),
     r"grid.tokens_per_param applies to an IsoFLOP pool"),
    ("stop_width 0", _with(lambda g: g.update(stop_width=0)), r"grid.stop_width: Input should be greater than 0"),
    ("planned run without tokens", _with(lambda g: g.update(target={"planned": [{"params": "1M"}]})),
     r"grid.target.planned.0.tokens: required key is missing"),
    ("unknown scoring", _with(lambda g: g.update(scoring="laplace")), r"grid.scoring: .*give one of bootstrap, delta, bias"),
]


@pytest.mark.parametrize("case,make,error", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_adaptive_grid_is_refused_naming_the_key(tmp_path, case, make, error):
    (tmp_path / "meds").mkdir()
    path = write_spec(tmp_path / "spec.yaml", make(Path("meds")))
    with pytest.raises(SpecError, match=error):
        load_spec(path)


EXPAND_INVALID = [
    ("several lr multipliers", _with(top_edit=lambda s: s["optimizer"].update(lr_multipliers=[1.0, 2.0])),
     r"optimizer.lr_multipliers: an adaptive grid fits one law"),
    ("budget below the initial design", _with(lambda g: g.update(budget="1e6")),
     r"grid.budget: 1e\+06 FLOPs does not pay for the initial design \(6 runs"),
]


@pytest.mark.parametrize("case,make,error", EXPAND_INVALID, ids=[c[0] for c in EXPAND_INVALID])
def test_adaptive_pool_that_cannot_start_is_refused_naming_the_key(tmp_path, case, make, error):
    (tmp_path / "meds").mkdir()
    spec = load_spec(write_spec(tmp_path / "spec.yaml", make(Path("meds"))))
    with pytest.raises(SpecError, match=error):
        runs = expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source="spec.yaml")
        check_pool(spec, Pool.of(runs), "spec.yaml")


def invoke(*args):
    """The CLI in this process (typer's runner): exit code and everything it printed."""
    from typer.testing import CliRunner

    from medscale.scaling.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_cli_exits_2_before_compute_naming_the_key(tmp_path):
    (tmp_path / "meds").mkdir()
    spec = adaptive_spec(tmp_path / "meds")
    spec["grid"]["budgte"] = spec["grid"].pop("budget")
    result = medscale("sweep", write_spec(tmp_path / "spec.yaml", spec), "--out", tmp_path / "out", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "grid.budgte: unknown key" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_exits_2_when_the_budget_does_not_pay_for_the_initial_design(tmp_path):
    (tmp_path / "meds").mkdir()
    spec = adaptive_spec(tmp_path / "meds")
    spec["grid"]["budget"] = "1e6"
    result = invoke("sweep", write_spec(tmp_path / "spec.yaml", spec), "--out", tmp_path / "out", "--dry-run",
                    "--no-memory")
    assert result.exit_code == 2, result.output
    assert "grid.budget: 1e+06 FLOPs does not pay for the initial design" in result.output
    assert not (tmp_path / "out" / "runs").exists()


def test_the_pool_expands_to_the_same_run_ids_as_the_grid_it_is_made_of(tmp_path):
    (tmp_path / "meds").mkdir()
    spec = load_spec(write_spec(tmp_path / "a.yaml", adaptive_spec(Path("meds"))))
    ladder = adaptive_spec(Path("meds"))
    ladder["grid"] = {"mode": "ladder", "params": SHAPES, "tokens": ladder["grid"]["tokens"]}
    plain = load_spec(write_spec(tmp_path / "l.yaml", ladder))
    a = expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source="a")
    b = expand(plain, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source="l")
    assert [Pool.of(a).ids] == [Pool.of(b).ids] and len(a) == 9


def test_example_spec_plans_a_fraction_of_its_pool():
    path = Path(__file__).resolve().parents[1] / "experiments" / "adaptive_demo.yaml"
    spec = load_spec(path)
    pool = Pool.of(expand(spec, token_dir="/t", vocab_size=547, dataset_id="d", source=str(path)))  # the demo's vocab
    init = check_pool(spec, pool, str(path))
    assert len(pool) == 36 and init.size >= 7 and pool.full[init].sum() < 0.1 * spec.grid.budget
    assert spec.grid.budget <= 0.25 * pool.planned_flops()
    dc = load_spec(path.with_name("adaptive_data_constrained.yaml"))  # its pool needs the prepared cohort
    assert grid_size(dc) == 36 and len(dc.dataset.fractions()) == 3 and dc.grid.target.planned


def test_wsd_branches_are_priced_at_their_cooldown_once_their_trunk_is_trained(tmp_path):
    (tmp_path / "meds").mkdir()
    raw = adaptive_spec(Path("meds"))
    raw["optimizer"].update(schedule="wsd", cooldown_fraction=0.25)
    spec = load_spec(write_spec(tmp_path / "w.yaml", raw))
    pool = Pool.of(expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source="w"))
    branches = [i for i, t in enumerate(pool.trunks) if t is not None]
    assert len(branches) == 6  # 3 sizes x (20 and 40 steps) fork from each size's 80-step trunk
    b = branches[0]
    before, after = pool.costs(set())[b], pool.costs({pool.trunks[b]})[b]
    assert before == pytest.approx(pool.full[b])
    assert after == pytest.approx(pool.full[b] * 0.25, rel=0.05)  # only its cooldown
    assert pool.planned_flops() < pool.full.sum()


def test_a_pool_over_several_train_fractions_carries_their_unique_tokens(tmp_path, tiny_dataset):
    """Several dataset.train_fraction values make a data-constrained pool: each candidate's U is its fraction's
    unique training tokens (read from the prepared dataset), a planned target trains on the whole split, the
    initial design has room for the law's 7 parameters, and the dry run shows U and the epochs."""
    from medscale.data.loader import unique_train_tokens
    from medscale.scaling.sweep.adaptive import DATA_CONSTRAINED_INITIAL, dry_run_lines, target_of

    meds, tokens = tiny_dataset
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    raw = adaptive_spec(meds, target={"planned": [{"params": "1e5", "tokens": "1e8"}]})
    raw["dataset"]["train_fraction"] = [0.25, 1.0]
    spec = load_spec(write_spec(tmp_path / "spec.yaml", raw))
    runs = expand(spec, token_dir=str(tokens), vocab_size=vocab, dataset_id="d", source="spec.yaml")
    pool = Pool.of(runs)
    assert pool.data_constrained and len(pool) == grid_size(spec) == 18  # 3 sizes x 3 token counts x 2 fractions
    U = {f: unique_train_tokens(tokens, "train", 32, f) for f in (0.25, 1.0)}
    assert U[0.25] < U[1.0] and pool.unique_all == U[1.0]
    assert sorted(set(pool.unique)) == [U[0.25], U[1.0]]
    assert np.isin(pool.tokens / pool.unique, [t / u for t in set(pool.tokens) for u in U.values()]).all()
    frame = pool.frame(np.arange(len(pool)), set())
    np.testing.assert_array_equal(frame["unique_tokens"], pool.unique)
    target = target_of(spec.grid, pool)
    assert target.unique is not None and list(target.unique) == [U[1.0]]
    init = check_pool(spec, pool, "spec.yaml")
    assert init.size >= DATA_CONSTRAINED_INITIAL > spec.grid.initial
    text = "\n".join(dry_run_lines(spec, runs, tmp_path / "out"))
    assert "2 training fractions (a data-constrained pool" in text and "epochs" in text
    assert f"U = {U[1.0]:.3g}" in text
    # one fraction: the pool is as before (no unique tokens, the Chinchilla law)
    raw["dataset"]["train_fraction"] = 0.25
    one = Pool.of(expand(load_spec(write_spec(tmp_path / "one.yaml", raw)), token_dir=str(tokens),
                         vocab_size=vocab, dataset_id="d", source="one.yaml"))
    assert not one.data_constrained and "unique_tokens" not in one.frame(np.arange(len(one)), set())


# ---------------------------------------------------------------------------------------------
# The loop, on a synthetic law with a fake trainer
# ---------------------------------------------------------------------------------------------

LAW = dict(E=1.7, A=400.0, B=1200.0, alpha=0.34, beta=0.28)
POOL_FLOPS = float((6 * np.outer([1e4, 3e4, 1e5, 3e5], [1e6, 3e6, 1e7, 3e7, 1e8])).sum())  # the whole synthetic pool


def _synthetic(budget: float, **grid):
    """A parsed adaptive spec and a Pool of 4 sizes x 5 token counts (fake configs), with a law's losses."""
    raw = {"name": "synthetic", "objective": "decoder", "dataset": {"simulator": {"subjects": 10}},
           "grid": {"mode": "adaptive", "params": ["1e4", "3e4", "1e5", "3e5"], "tokens": ["1e6", "3e6", "1e7"],
                    "budget": budget, "target": {"n_opt_at": "1e17"}, "batch": 2, "initial": 7, "n_boot": 20, **grid}}
    spec = parse_spec(raw)
    N, D = np.meshgrid([1e4, 3e4, 1e5, 3e5], [1e6, 3e6, 1e7, 3e7, 1e8], indexing="ij")
    N, D = N.ravel(), D.ravel()
    noise = np.exp(0.004 * np.sin(np.arange(N.size) * 1.7))  # deterministic run-to-run scatter
    loss = (LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]) * noise
    ids = [f"decoder-{i:012d}" for i in range(N.size)]
    pool = Pool(configs=[{}] * N.size, ids=ids, params=N, tokens=D, full=6 * N * D, marginal=6 * N * D,
                trunks=[None] * N.size)
    return spec, pool, loss


class FakeTrainer:
    """Trains a row by revealing its loss; counts what it trained; can be killed at a given call."""

    def __init__(self, loss, kill_at_call: int | None = None):
        self.loss, self.kill_at_call = loss, kill_at_call
        self.done: dict[int, float] = {}
        self.trained: list[int] = []  # rows trained for the first time, in order
        self.calls = 0

    def train(self, rows):
        self.calls += 1
        if self.kill_at_call is not None and self.calls == self.kill_at_call:
            raise KeyboardInterrupt  # killed after the decision was recorded, before its runs finished
        for r in rows:
            if r not in self.done:
                self.done[r] = float(self.loss[r])
                self.trained.append(r)

    def outcome(self, row):
        return ("done", self.done[row]) if row in self.done else ("pending", None)


def _loop(spec, pool, folder: Path, trainer: FakeTrainer, **kw):
    history = History(folder, spec.name)
    history.claim(identity(spec, pool))
    return adaptive_loop(spec, pool, history, trainer.train, trainer.outcome, **kw)


def _chosen(records):
    return [[c["run_id"] for c in d["chosen"]] for d in records]


def test_loop_records_each_decision_and_stops_at_the_budget(tmp_path):
    spec, pool, loss = _synthetic(budget=0.1 * POOL_FLOPS)
    trainer = FakeTrainer(loss)
    result = _loop(spec, pool, tmp_path, trainer)
    records = History(tmp_path, spec.name).decisions()
    assert records == result.decisions and records[0]["kind"] == "initial" and records[-1]["kind"] == "stop"
    assert all(d["kind"] == "select" for d in records[1:-1]) and len(records) >= 3
    chosen = [c for d in _chosen(records) for c in d]
    assert len(chosen) == len(set(chosen)) == len(trainer.trained) < len(pool)
    spent = sum(pool.full[pool.row(c)] for c in chosen)
    assert records[-1]["spent_after"] == pytest.approx(spent) and spent <= spec.grid.budget
    assert "fits in the" in records[-1]["stopped"]
    for d in records[1:]:
        fit = d["fit"]
        assert fit["runs"] == sum(len(c) for c in _chosen(records[:d["batch"]]))
        assert set(fit["parameters"]) >= {"E", "A", "B", "alpha", "beta"}
        t = fit["target"]
        assert t["kind"] == "n_opt" and t["low"][0] < t["point"][0] < t["high"][0] and t["width"] > 0
    for d in records[1:-1]:  # a fit with E, alpha or beta at its bound chooses without scores (design.AT_BOUND)
        assert all(c["score"] is None if d["fit"]["undetermined"] else c["score"] > 0 for c in d["chosen"])
        assert all(c["run_id"] not in {x for b in _chosen(records[:d["batch"]]) for x in b} for c in d["candidates"])
        assert d["spent_after"] == pytest.approx(d["spent_before"] + sum(c["cost"] for c in d["chosen"]))
    assert [d["fit"]["undetermined"] for d in records[1:-1]] == [True, False, False]  # E -> 0 on the first 7 runs
    # a rerun of a finished sweep decides nothing and trains nothing
    again = FakeTrainer(loss)
    again.done = dict(trainer.done)
    rerun = _loop(spec, pool, tmp_path, again)
    assert again.trained == [] and History(tmp_path, spec.name).decisions() == records
    assert rerun.stopped.startswith("finished")


def test_loop_stops_at_the_width(tmp_path):
    spec, pool, loss = _synthetic(budget="1e20", stop_width=1e6)
    trainer = FakeTrainer(loss)
    _loop(spec, pool, tmp_path, trainer)
    records = History(tmp_path, spec.name).decisions()
    assert [d["kind"] for d in records] == ["initial", "stop"] and "grid.stop_width" in records[-1]["stopped"]
    assert len(trainer.trained) == len(records[0]["chosen"])


def test_killed_loop_resumes_with_the_same_choices(tmp_path):
    kill_at_call = 3  # killed during the batch of decision 2
    budget = 0.1 * POOL_FLOPS
    spec, pool, loss = _synthetic(budget=budget)
    whole = FakeTrainer(loss)
    _loop(spec, pool, tmp_path / "whole", whole)
    expected = _chosen(History(tmp_path / "whole", spec.name).decisions())

    killed = FakeTrainer(loss, kill_at_call=kill_at_call)
    with pytest.raises(KeyboardInterrupt):
        _loop(spec, pool, tmp_path / "killed", killed)
    recorded = History(tmp_path / "killed", spec.name).decisions()
    assert len(recorded) == kill_at_call  # the decision whose batch was killed is recorded already
    before = {p.name: p.read_bytes() for p in (tmp_path / "killed" / "adaptive" / spec.name).iterdir()}
    resumed = FakeTrainer(loss)
    resumed.done = dict(killed.done)
    _loop(spec, pool, tmp_path / "killed", resumed)
    assert _chosen(History(tmp_path / "killed", spec.name).decisions()) == expected
    for name, body in before.items():  # recorded decisions are replayed, never rewritten
        assert (tmp_path / "killed" / "adaptive" / spec.name / name).read_bytes() == body
    assert sorted(killed.trained + resumed.trained) == sorted(whole.trained)


def test_loop_with_max_batches_stops_there(tmp_path):
    spec, pool, loss = _synthetic(budget="1e20")
    trainer = FakeTrainer(loss)
    first = _loop(spec, pool, tmp_path, trainer, max_batches=1)
    assert len(first.decisions) == 1 and "max_batches" in first.stopped and len(trainer.trained) == 7


def test_a_changed_pool_or_target_is_refused_but_a_larger_budget_continues(tmp_path):
    from medscale.scaling.errors import UserError

    budget = 0.1 * POOL_FLOPS
    spec, pool, loss = _synthetic(budget=budget)
    trainer = FakeTrainer(loss)
    _loop(spec, pool, tmp_path, trainer)
    n = len(History(tmp_path, spec.name).decisions())
    other, _, _ = _synthetic(budget=budget, target={"n_opt_at": "1e18"})
    with pytest.raises(UserError, match=r"a different grid.target.*Set it back to resume"):
        History(tmp_path, spec.name).claim(identity(other, pool))
    smaller = Pool(**{**pool.__dict__, "ids": pool.ids[:-1] + ["decoder-other"]})
    with pytest.raises(UserError, match=r"a different pool of candidate runs"):
        History(tmp_path, spec.name).claim(identity(spec, smaller))
    variance, _, _ = _synthetic(budget=budget, scoring="bootstrap")
    with pytest.raises(UserError, match=r"a different grid.scoring"):
        History(tmp_path, spec.name).claim(identity(variance, pool))
    more, _, _ = _synthetic(budget=1.5 * budget)
    _loop(more, pool, tmp_path, trainer)
    records = History(tmp_path, spec.name).decisions()
    assert len(records) > n + 1 and records[n]["kind"] == "select" and records[-1]["kind"] == "stop"
    assert records[-1]["spent_after"] <= 1.5 * budget


# ---------------------------------------------------------------------------------------------
# The dry run and the real sweep, from the CLI
# ---------------------------------------------------------------------------------------------

def test_dry_run_shows_the_pool_the_first_batch_and_the_planned_compute(tmp_path):
    (tmp_path / "meds").mkdir()
    path = write_spec(tmp_path / "spec.yaml", adaptive_spec(tmp_path / "meds"))
    result = invoke("sweep", path, "--out", tmp_path / "out", "--dry-run", "--no-memory")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "a pool of 9 candidate runs (3 sizes x 3 token counts)" in text
    assert "first batch: the initial design, 6 runs" in text
    assert text.count("decoder-") == 6
    assert "planned compute: grid.budget 1e+12 FLOPs" in text and "the whole pool would cost" in text
    assert "(bias scoring; at_bound spread: while the fitted law has E, alpha or beta at its bound)" in text
    assert not (tmp_path / "out" / "runs").exists()


def test_dry_run_of_an_ordinary_grid_is_unchanged(tmp_path):
    (tmp_path / "meds").mkdir()
    path = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "meds"))
    result = invoke("sweep", path, "--out", tmp_path / "out", "--dry-run", "--no-memory")
    assert result.exit_code == 0, result.output
    assert "expanded plan: 1 runs" in result.output and "adaptive" not in result.output


def _state(out: Path) -> dict:
    from medscale.scaling.sweep.store import RunStore

    return {r.run_id: (r.state(), r.status().get("finished_at"), r.status().get("attempts"))
            for r in RunStore(out).runs()}


@pytest.mark.slow
def test_adaptive_sweep_end_to_end_records_resumes_and_is_idempotent(tmp_path, tiny_dataset, fast_figures):
    meds, _ = tiny_dataset
    spec_dict = adaptive_spec(meds)
    spec = load_spec(write_spec(tmp_path / "probe.yaml", spec_dict))
    vocab = json.loads((tiny_dataset[1] / "manifest.json").read_text())["vocab_size"]
    pool_runs = expand(spec, token_dir="", vocab_size=vocab, dataset_id="", source="probe")
    # a budget for the initial design and about two more runs
    full = Pool.of(pool_runs).full
    spec_dict["grid"]["budget"] = float(np.sort(full)[:8].sum() * 1.6)
    path = write_spec(tmp_path / "spec.yaml", spec_dict)
    out = tmp_path / "out"
    first = medscale("sweep", path, "--out", out, "--max-concurrent", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    folder = out / "adaptive" / "tiny-adaptive"
    records = History(out, "tiny-adaptive").decisions()
    assert records[0]["kind"] == "initial" and records[-1]["kind"] == "stop" and len(records) >= 3
    chosen = [c for d in _chosen(records) for c in d]
    state = _state(out)
    assert set(state) == set(chosen) and len(chosen) < 9  # exactly the chosen runs were trained
    assert all(s[0] == "done" for s in state.values())
    assert records[-1]["spent_after"] <= float(spec_dict["grid"]["budget"])
    assert records[-1]["fit"]["runs"] == len(chosen)
    assert "adaptive sweep tiny-adaptive" in first.stdout and "FLOPs spent" in first.stdout

    # a rerun of the finished sweep trains nothing and decides nothing new
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = medscale("sweep", path, "--out", out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _state(out) == state and {p.name: p.read_bytes() for p in folder.iterdir()} == files

    # killed during the batch of decision 1: its record exists, its runs and everything after do not
    for d in records[1:]:
        for run_id in _chosen([d])[0]:
            shutil.rmtree(out / "runs" / run_id)
    for p in folder.glob("decision-*.json"):
        if int(p.stem.split("-")[1]) >= 2:
            p.unlink()
    decision1 = (folder / "decision-0001.json").read_bytes()
    resumed = medscale("sweep", path, "--out", out, "--max-concurrent", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (folder / "decision-0001.json").read_bytes() == decision1  # replayed, not decided again
    assert _chosen(History(out, "tiny-adaptive").decisions()) == _chosen(records)  # the same choices after it
    assert set(_state(out)) == set(chosen)

    # the report shows the path (item 4): a section with the decision table, the width figure and the full
    # grid's cost; the pool is the stored spec expanded over the store's dataset (the fits' figures stubbed:
    # fast_figures; the path's own figure is drawn)
    from medscale.scaling.pipeline import analyze_store

    analyzed = analyze_store(out, report_dir=tmp_path / "report", n_boot=20)
    text = analyzed.report.read_text()
    assert "<h2>Adaptive sweep tiny-adaptive <small>(decoder)</small></h2>" in text
    path = analyzed.fits["adaptive"]["tiny-adaptive"]
    assert path["pool_runs"] == 9 and path["chosen_runs"] == len(chosen)
    assert path["spent"] == pytest.approx(records[-1]["spent_after"])
    assert path["pool_flops"] == pytest.approx(Pool.of(pool_runs).planned_flops())
    assert [d["batch"] for d in path["decisions"]] == list(range(len(records)))
    assert f"the full grid of 9 candidate runs would have cost {path['pool_flops']:.3g} FLOPs" in text
    assert (tmp_path / "report" / "tiny_adaptive_adaptive_path.png").stat().st_size > 0


def test_the_scoring_is_the_sweeps_and_a_sweep_recorded_before_it_existed_resumes_as_bootstrap(tmp_path):
    """grid.scoring (default analysis/design.py SCORING) steers the choices and is part of the sweep's identity; a
    sweep whose pool.json predates the key chose with the bootstrap criterion, the only one then, and resumes only
    with grid.scoring: bootstrap."""
    from medscale.analysis.design import SCORING
    from medscale.scaling.errors import UserError
    from medscale.atomic import read_json, write_json

    budget = 0.1 * POOL_FLOPS
    default, pool, loss = _synthetic(budget=budget)
    assert default.grid.scoring == SCORING
    chosen = {}
    for scoring in ("bias", "bootstrap"):
        spec, _, _ = _synthetic(budget=budget, scoring=scoring)
        _loop(spec, pool, tmp_path / scoring, FakeTrainer(loss), max_batches=2)
        records = History(tmp_path / scoring, spec.name).decisions()
        chosen[scoring] = _chosen(records)
        assert read_json(tmp_path / scoring / "adaptive" / spec.name / "pool.json")["scoring"] == scoring
    assert chosen["bias"][0] == chosen["bootstrap"][0]  # the same initial design
    assert chosen["bias"][1] != chosen["bootstrap"][1]  # then each criterion's own batch
    legacy = tmp_path / "bootstrap" / "adaptive" / default.name / "pool.json"
    ident = read_json(legacy)
    ident.pop("scoring")
    write_json(legacy, ident)
    with pytest.raises(UserError, match=r"a different grid.scoring"):
        History(tmp_path / "bootstrap", default.name).claim(identity(_synthetic(budget=budget, scoring="bias")[0], pool))
    spec, _, _ = _synthetic(budget=budget, scoring="bootstrap")
    History(tmp_path / "bootstrap", spec.name).claim(identity(spec, pool))


def test_the_at_bound_rule_is_part_of_the_identity_and_a_bias_sweep_from_before_it_resumes_with_none(tmp_path):
    """grid.at_bound (default: analysis/design.py's for the scoring) is recorded in pool.json; a bias sweep recorded
    before the rule existed chose as "none" and resumes only with grid.at_bound: none; an unknown rule is refused
    naming the key."""
    from medscale.atomic import read_json, write_json
    from medscale.scaling.errors import UserError

    budget = 0.1 * POOL_FLOPS
    spec, pool, _ = _synthetic(budget=budget)
    assert identity(spec, pool)["at_bound"] == "spread"
    assert identity(_synthetic(budget=budget, scoring="delta")[0], pool)["at_bound"] == "none"
    history = History(tmp_path, spec.name)
    history.claim(identity(spec, pool))
    ident = read_json(history.dir / "pool.json")
    assert ident.pop("at_bound") == "spread"
    write_json(history.dir / "pool.json", ident)
    with pytest.raises(UserError, match=r"a different grid.at_bound"):
        history.claim(identity(spec, pool))
    history.claim(identity(_synthetic(budget=budget, at_bound="none")[0], pool))
    with pytest.raises(SpecError, match=r"grid.at_bound"):
        _synthetic(budget=budget, at_bound="sometimes")


def test_loop_over_a_data_constrained_pool_fits_and_scores_with_that_law(tmp_path):
    """A pool whose runs carry unique tokens (several train fractions): the loop fits the data-constrained law,
    records each run's U, and its choices differ from a loop that ignores U."""
    from medscale.analysis import synthetic

    spec, pool, _ = _synthetic(budget=0.05 * POOL_FLOPS * 2)
    n = len(pool)
    U = np.repeat([3e5, 3e7], n)  # every candidate at a small and a large training split
    N, D = np.tile(pool.params, 2), np.tile(pool.tokens, 2)
    dc = Pool(configs=[{}] * 2 * n, ids=[f"decoder-{i:012d}" for i in range(2 * n)], params=N, tokens=D,
              full=6 * N * D, marginal=6 * N * D, trunks=[None] * 2 * n, unique=U, unique_all=3e7)
    loss = synthetic.data_constrained_loss(N, D, U, synthetic.DATA_LAW) * np.exp(0.004 * np.sin(np.arange(2 * n)))
    trainer = FakeTrainer(loss)
    with np.errstate(all="ignore"):
        _loop(spec, dc, tmp_path, trainer, max_batches=2)
    records = History(tmp_path, spec.name).decisions()
    assert [d["kind"] for d in records] == ["initial", "select"]
    assert len(records[0]["chosen"]) >= 9
    for d in records[1:]:
        assert d["fit"]["law"] == "DataConstrainedFit" and "R_star_D" in d["fit"]["parameters"]
        assert all(c["unique_tokens"] == U[dc.row(c["run_id"])] for c in d["chosen"] + d["candidates"])
    plain = Pool(**{**dc.__dict__, "unique": None, "unique_all": None})
    with np.errstate(all="ignore"):
        _loop(spec, plain, tmp_path / "plain", FakeTrainer(loss), max_batches=2)
    ignored = History(tmp_path / "plain", spec.name).decisions()
    assert ignored[1]["fit"]["law"] == "ParametricFit"
    assert _chosen(ignored[1:]) != _chosen(records[1:])
