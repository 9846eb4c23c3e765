"""The recommended run spec is runnable as is and describes what the law recommends."""
import numpy as np
import pandas as pd
import pytest

from medscale.analysis import synthetic
from medscale.models.config import counted_params
from medscale.scaling.plan.recommend import recommend, run_spec
from medscale.scaling.sweep.spec import expand, parse_spec

BUDGET = 1e21


def results_table(unique: bool) -> pd.DataFrame:
    """A store-like results table: two learning-rate multipliers per point, the second the better one."""
    base = synthetic.data_constrained_table(epochs=(1.0, 4.0, 20.0), noise=0.0) if unique else \
        synthetic.isoflop_table(noise=0.0)
    worse, better = base.copy(), base.copy()
    worse["lr_multiplier"], worse["loss"] = 0.5, worse["loss"] * 1.03
    better["lr_multiplier"] = 2.0
    df = pd.concat([worse, better], ignore_index=True)
    df["lr"] = 3e-3 * df["lr_multiplier"]
    df["flops_full"] = 6 * df["params"] * df["tokens"] * (1 + 3e3 / np.sqrt(df["params"]))
    df["vocab_size"], df["seq_len"], df["batch_size"] = 1000, 128, 16
    df.loc[0, "batch_size"] = 8  # one odd run: the common settings win
    df["param_count"], df["sweep"] = "total", "grid"
    return df


SWEEPS = {"grid": {"optimizer": {"lr": 3e-3, "lr_scaling": "inverse_width", "base_width": 128,
                                 "lr_multipliers": [0.5, 2.0]}}}


@pytest.mark.parametrize("unique", [False, True])
def test_spec_trains_the_shape_it_names_at_the_budget(unique):
    rec = recommend(results_table(unique), BUDGET, n_boot=10, sweeps=SWEEPS,
                    max_tokens=3e10 if unique else None)
    n_shape = counted_params(rec["shape"], "total")
    assert rec["n"] == n_shape
    # D is recomputed for the shape's own N on the full FLOP count, so the run spends the budget
    fpt = 6 * n_shape * (1 + 3e3 / np.sqrt(n_shape))
    assert rec["tokens"] == pytest.approx(BUDGET / fpt, rel=0.02)
    assert rec["compute_convention"] == "full"
    assert rec["batch_size"] == 16 and rec["seq_len"] == 128
    assert rec["optimizer"]["lr_multipliers"] == [2.0]
    lo, hi = rec["band"]
    assert lo <= rec["allocation"].n_opt.value <= hi
    if unique:
        assert rec["allocation"].epochs.value == pytest.approx(rec["allocation"].d_opt.value / 3e10)
    spec_dict = run_spec(rec, name="compute-optimal", dataset={"simulator": {"subjects": 100, "seed": 0}})
    spec = parse_spec(spec_dict)
    (run,) = expand(spec, token_dir="t", vocab_size=1000, dataset_id="x")
    assert run["model"]["d_model"] == rec["shape"].d_model
    assert run["train"]["tokens"] == pytest.approx(rec["tokens"], rel=0.01)
    assert run["train"]["lr_multiplier"] == 2.0
    assert run["train"]["lr"] == pytest.approx(3e-3 * 128 / rec["shape"].d_model * 2.0)


def test_multiplier_is_recovered_from_lr_when_runs_did_not_record_it():
    df = results_table(False)
    df["lr"] = 3e-3 * 128 / df["d_model"] * df["lr_multiplier"]
    rec = recommend(df.drop(columns=["lr_multiplier"]), BUDGET, n_boot=0, sweeps=SWEEPS)
    assert rec["optimizer"]["lr_multipliers"] == [2.0]


def _swept(best: tuple[int, int]) -> pd.DataFrame:
    """Runs at two budgets; at the larger one `best` (d_model, n_layers) has the lowest loss (two seeds)."""
    shapes = [(32, 1), (64, 1), (32, 4), (64, 2)]
    rows = []
    for budget in (1e11, 1e12):
        for d, n in shapes:
            for seed in (0, 1):
                loss = 3.0 - 0.1 * (budget == 1e12) + (0.0 if (d, n) == best else 0.05 + 0.01 * n)
                rows.append({"budget": budget, "d_model": d, "n_layers": n, "n_heads": 1, "seed": seed,
                             "tokens": budget / 6e4, "loss": loss + 0.001 * seed})
    return pd.DataFrame(rows)


SHAPE_KW = {"vocab_size": 500, "max_len": 128, "causal": True}


def test_shape_follows_the_sweep_when_depth_helped_and_the_rule_is_shallower():
    from medscale.scaling.plan.recommend import best_swept_shape, choose_shape

    best = best_swept_shape(_swept((32, 4)))
    assert (best["d_model"], best["n_layers"], best["value"]) == (32, 4, 1e12) and best["depth_helps"]
    target = 120e3  # total params: the default rule gives a single wide layer here (d_model 64)
    rule, _ = choose_shape(target, "total", None, **SHAPE_KW)
    assert rule.n_layers == 1
    shape, choice = choose_shape(target, "total", best, **SHAPE_KW)
    assert choice["source"] == "sweep" and shape.n_layers > 1
    assert shape.d_model / shape.n_layers == pytest.approx(best["d_model"] / best["n_layers"], rel=0.5)
    assert abs(np.log(counted_params(shape, "total") / target)) < np.log(1.5)
    assert "32 x 4 layers" in choice["reason"] and "1 layer(s)" in choice["reason"]


@pytest.mark.parametrize("best, why", [((64, 1), "does not show depth helping"), (None, "fewer than two shapes")])
def test_shape_keeps_the_rule_when_the_sweep_shows_no_depth_gain(best, why):
    from medscale.scaling.plan.recommend import best_swept_shape, choose_shape

    swept = best_swept_shape(_swept(best)) if best else best_swept_shape(_swept((32, 4)).head(2))
    shape, choice = choose_shape(120e3, "total", swept, **SHAPE_KW)
    assert choice["source"] == "rule" and why in choice["reason"]
    assert shape == choose_shape(120e3, "total", None, **SHAPE_KW)[0]


def test_recommendation_says_where_its_shape_came_from():
    rec = recommend(results_table(False), BUDGET, n_boot=0, sweeps=SWEEPS)
    assert rec["shape_choice"]["source"] in ("rule", "sweep")
    assert rec["shape_choice"]["reason"] in rec["notes"]
