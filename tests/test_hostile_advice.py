"""Hostile use of the recommendation commands (issue 33, "advice far past the data"): a budget decades past the
runs says how far it extrapolates and warns past the limit; the printed shape and spec are the model the printed
N and D describe, or none is made; unique tokens fewer than one training window are refused by the option's own
name; a compute column that disagrees with 6ND is named. In-process (typer's runner): exit codes and text."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medscale.analysis import fit_table
from medscale.analysis.conventions import full_flops_per_token
from medscale.analysis.extrapolation import REACH_LIMIT_DECADES
from medscale.models.config import ModelConfig, counted_params
from medscale.scaling.cli import app
from medscale.scaling.plan.flops import flops_per_token
from medscale.scaling.sweep.results import load_results

SIZES, TOKENS = (1e5, 2e5, 4e5, 1e6, 2e6), (5e6, 1e7, 3e7, 6e7)


def _invoke(*args) -> tuple[int, str]:
    """(exit code, the output with whitespace runs made single spaces: whole sentences, whatever the width)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    text = result.output
    assert "Traceback" not in text and not isinstance(result.exception, (TypeError, KeyError, AttributeError)), text
    return result.exit_code, " ".join(text.split())


def _json(*args) -> dict:
    result = CliRunner().invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def law_csv(tmp_path_factory):
    """20 runs of a Chinchilla-like law, every one below 1e15 FLOPs (the largest: 7.2e14)."""
    N, D = (a.ravel() for a in np.meshgrid(SIZES, TOKENS))
    loss = (1.7 + 400 / N ** 0.34 + 410 / D ** 0.28) * (1 + 0.003 * np.random.default_rng(0).standard_normal(N.size))
    path = tmp_path_factory.mktemp("advice") / "runs.csv"
    pd.DataFrame({"N": N, "D": D, "L": loss, "C": 6 * N * D}).to_csv(path, index=False)
    return path


FIT = ["--params", "N", "--loss", "L", "--tokens", "D", "--n-boot", "5"]


# ---------------------------------------------------------------------------------------------
# 1. a budget far past the runs
# ---------------------------------------------------------------------------------------------

def test_hostile_far_budget_says_how_far_it_extrapolates_and_what_to_run(law_csv):
    out = _json("fit", law_csv, *FIT, "--budget", "1e40")
    reach = out["optimal"]["beyond_data"]
    assert reach["largest_run_compute"] == pytest.approx(6 * 2e6 * 6e7)
    assert reach["compute_decades"] == pytest.approx(math.log10(1e40 / 7.2e14))
    assert reach["params_decades"] == pytest.approx(math.log10(out["optimal"]["N"]["value"] / 2e6))
    assert reach["tokens_decades"] == pytest.approx(math.log10(out["optimal"]["D"]["value"] / 6e7))
    assert reach["beyond_limit"] and reach["limit_decades"] == REACH_LIMIT_DECADES
    (warning,) = [w for w in out["warnings"] if "decades of compute past the largest run" in w]
    assert warning in out["optimal"]["warnings"]
    assert "25.1 decades" in warning and "To close the gap, train runs up to about" in warning
    assert f"C = {1e40 / 10 ** REACH_LIMIT_DECADES:.3g} FLOPs" in warning
    # the text says it too: the note with the decades figure, and the warning
    code, text = _invoke("fit", law_csv, *FIT, "--budget", "1e40")
    assert code == 0
    assert "note: past the runs: the budget is 25.1 decades past the largest run's compute (7.2e+14 FLOPs)" in text
    assert "warning: this recommendation extrapolates 25.1 decades" in text


def test_hostile_budget_one_decade_past_is_noted_without_a_warning(law_csv):
    res = fit_table(pd.read_csv(law_csv), params="N", loss="L", tokens="D", n_boot=0, budget=7.2e15)
    reach = res.to_dict()["optimal"]["beyond_data"]
    assert reach["compute_decades"] == pytest.approx(1.0)
    assert not reach["beyond_limit"]
    assert not [w for w in res.warnings if "decades" in w]
    assert any(n.startswith("past the runs: the budget is 1.0 decades past") for n in res.optimal.notes)
    # fits.json records allocations through Allocation.to_dict: the same figure is there
    assert res.optimal.to_dict()["beyond_data"]["compute_decades"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# 2. the printed shape and spec are the model the printed N and D describe
# ---------------------------------------------------------------------------------------------

SEQ_LEN = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run store of 12 finished decoder runs (4 widths x 3 token counts) with their exact FLOP counts; the
    largest run is about 2e13 FLOPs."""
    from medscale.atomic import write_json
    from medscale.scaling.sweep.store import RunStore

    root = tmp_path_factory.mktemp("advice_store") / "store"
    runs = RunStore(root, say=lambda m: None).claim()
    rng = np.random.default_rng(0)
    for width in (32, 48, 64, 96):
        model = {"vocab_size": 100, "d_model": width, "n_layers": 2, "n_heads": 2, "d_ff": 4 * width,
                 "max_len": 64, "causal": True}
        count = flops_per_token(ModelConfig(**model), SEQ_LEN)
        for d in (1e6, 3e6, 1e7):
            config = {"sweep": "s", "objective": "decoder", "budget": None, "model": model,
                      "data": {"token_dir": "/x", "dataset_id": "abc", "seq_len": SEQ_LEN, "batch_size": 8,
                               "mask_prob": 0.15},
                      "train": {"tokens": int(d), "steps": 100, "seed": 0, "lr": 1e-3},
                      "eval": {"n_evals": 2, "batches": 1}, "checkpoint": {"every_steps": 5}}
            run = runs.ensure(config)
            n = count.six_n / 6
            loss = 1.5 + 400 / n ** 0.35 + 900 / d ** 0.3 + rng.normal(0, 1e-3)
            write_json(run.metrics_path, {"loss": loss, "params": n, "tokens": int(d), "compute": 6 * n * d,
                                          "flops_full": count.full * d})
            run.set_status("done", attempts=1)
    return root


def test_hostile_optimal_refuses_an_n_no_shape_reaches_and_writes_no_spec(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    code, text = _invoke("optimal", "--runs", store, "--compute", "1e40", "--n-boot", "5",
                         "--compute-convention", "6nd", "--spec-out", spec)
    assert code == 2, text
    n_opt = float(re.search(r"N_opt = ([0-9.e+]+) params", text).group(1))
    assert n_opt > 1e15
    assert "more than the largest model the shape rules build" in text
    assert "d_model 32768 x 128 layers, 1.65e+12 params" in text  # what the largest is
    assert "decades of compute past the largest run fitted" in text
    assert "ask for a budget of at most" in text and "no shape or run spec is made" in text
    assert not spec.exists()


@pytest.mark.parametrize("convention", ["6nd", "full"])
def test_hostile_optimal_shape_and_spec_are_the_printed_n_at_the_budget(store, tmp_path, convention):
    budget = 1e16  # about 3 decades past the largest run: a shape exists
    spec = tmp_path / "spec.yaml"
    code, text = _invoke("optimal", "--runs", store, "--compute", budget, "--n-boot", "5",
                         "--compute-convention", convention, "--spec-out", spec)
    assert code == 0, text
    n_opt = float(re.search(r"N_opt = ([0-9.e+]+) ", text).group(1))
    shape = re.search(r"shape: d_model (\d+), (\d+) layers, (\d+) heads, d_ff (\d+) \(([\d,]+) non-embedding", text)
    n_shape = int(shape.group(5).replace(",", ""))
    assert abs(math.log(n_shape / n_opt)) < math.log(2)  # the shape is the printed N, to a shape step
    tokens = float(re.search(r"trained on ([0-9.e+]+) tokens", text).group(1))
    cfg = ModelConfig(vocab_size=100, d_model=int(shape.group(1)), n_layers=int(shape.group(2)),
                      n_heads=int(shape.group(3)), d_ff=int(shape.group(4)), max_len=SEQ_LEN, causal=True)
    assert counted_params(cfg, "non_embedding") == n_shape
    if convention == "6nd":  # C = 6ND, the one count (scaling/plan/flops.py)
        assert flops_per_token(cfg, SEQ_LEN, "non_embedding").six_n * tokens == pytest.approx(budget, rel=1e-3)
        assert 6 * n_shape * tokens == pytest.approx(budget, rel=1e-3)
    else:  # the full count the allocation spent the budget on: the runs' recorded full FLOPs per token of N
        runs = load_results(store)[0]
        fpt = full_flops_per_token(runs["params"], runs["tokens"], runs["flops_full"])
        assert float(fpt(n_shape)) * tokens == pytest.approx(budget, rel=1e-3)
        exact = flops_per_token(cfg, SEQ_LEN, "non_embedding").full * tokens  # what the spec will really cost
        assert exact == pytest.approx(budget, rel=0.05)
    written = yaml.safe_load(spec.read_text())
    (point,) = written["grid"]["params"]
    assert (point["d_model"], point["n_layers"], point["d_ff"]) == (cfg.d_model, cfg.n_layers, cfg.d_ff)
    assert float(written["grid"]["tokens"][0]) == pytest.approx(tokens, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# 3. unique tokens: fewer than one window refused; every message names the command's own options
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens, needle", [
    ("100", "--available-tokens 100: fewer unique tokens than one training window"),
    ("0", "--available-tokens 0: give the number of unique tokens")])
def test_hostile_fit_refuses_meaningless_available_tokens_by_option_name(law_csv, tokens, needle):
    code, text = _invoke("fit", law_csv, *FIT, "--budget", "1e20", "--available-tokens", tokens)
    assert code == 2, text
    assert needle in text
    assert "max_tokens" not in text and "max_epochs" not in text


def test_hostile_fit_window_is_the_tables_seq_len_when_it_has_one(law_csv, tmp_path):
    df = pd.read_csv(law_csv).assign(seq_len=1024)
    path = tmp_path / "runs.csv"
    df.to_csv(path, index=False)
    code, text = _invoke("fit", path, *FIT, "--budget", "1e20", "--available-tokens", "500")
    assert code == 2 and "(1024 tokens: the shortest seq_len in the table)" in text, text


def test_hostile_optimal_refuses_fewer_tokens_than_one_window_of_its_runs(store):
    code, text = _invoke("optimal", "--runs", store, "--compute", "1e15", "--n-boot", "5",
                         "--available-tokens", "10")
    assert code == 2, text
    assert f"--available-tokens 10: fewer unique tokens than one training window (seq_len {SEQ_LEN}" in text
    code, text = _invoke("optimal", "--runs", store, "--compute", "0")
    assert code == 2 and "--compute 0: give the training budget in FLOPs" in text, text


def test_hostile_token_limited_advice_names_options_fit_has(law_csv):
    code, text = _invoke("fit", law_csv, *FIT, "--budget", "1e20", "--available-tokens", "1e6")
    assert code == 0, text
    assert "token-limited" in text and "max_epochs" not in text
    assert "medscale fit --unique-tokens COL" in text
    fit_help = CliRunner().invoke(app, ["fit", "--help"]).output
    assert "--unique-tokens" in fit_help and "--max-epochs" not in fit_help


# ---------------------------------------------------------------------------------------------
# 4. a compute column that disagrees with 6ND
# ---------------------------------------------------------------------------------------------

def test_hostile_compute_column_inconsistent_with_6nd_is_named(law_csv, tmp_path):
    df = pd.read_csv(law_csv)
    df.loc[[2, 5], "C"] *= 10
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    out = _json("fit", path, *FIT, "--compute", "C")
    (warning,) = [w for w in out["warnings"] if "differs from 6 N D" in w]
    assert "in 2 of 20 rows (rows 2, 5: C / 6ND from 10 to 10)" in warning
    assert "more than 5%" in warning and "'C' is not used" in warning  # which one the fit uses
    code, text = _invoke("fit", law_csv, *FIT, "--compute", "C")  # consistent: nothing said
    assert code == 0 and "differs from 6 N D" not in text


def test_hostile_compute_column_used_by_approach_2_says_so():
    from medscale.analysis import synthetic

    iso = synthetic.isoflop_table(noise=0.0)
    iso["compute"] = 6 * iso["params"] * iso["tokens"]
    iso.loc[0, "compute"] *= 1.5
    res = fit_table(iso, params="params", loss="loss", tokens="tokens", compute="compute", approach=2, n_boot=0,
                    budget_col="budget")
    (warning,) = [w for w in res.warnings if "differs from 6 N D" in w]
    assert "rows 0:" in warning and "Approach 2 uses 'compute'" in warning
