"""The demo's WSD specs plan what the demo promises: two decades of decoder compute with at least 3 sizes per
IsoFLOP budget, an encoder ladder with enough points for a law, and less compute than the same grids under
cosine. Planning only (no dataset, no training): the vocabulary is about the demo cohort's."""
import math

from medscale.scaling.demo import DATA_CONSTRAINED, PRESETS, spec_path
from medscale.scaling.sweep.spec import expand, load_spec
from medscale.scaling.sweep.wsd import compute_comparison, fork_of

VOCAB = 547  # the demo cohort's vocabulary (simulator 8,000 subjects, min_count 100, value_bins 10)


def _runs(name: str) -> list[dict]:
    path = spec_path(name)
    return expand(load_spec(path), token_dir="/t", vocab_size=VOCAB, dataset_id="d", source=str(path))


def test_decoder_sweep_spans_two_decades_with_three_sizes_per_budget_under_wsd():
    runs = _runs(PRESETS["small"][0])
    budgets = sorted({r["budget"] for r in runs})
    assert budgets[-1] / budgets[0] >= 100
    for b in budgets:
        assert len({(r["model"]["d_model"], r["model"]["n_layers"]) for r in runs if r["budget"] == b}) >= 3
    assert all(r["train"]["schedule"] == "wsd" for r in runs)
    plan = compute_comparison(runs)
    assert plan["branches"] > 0 and plan["planned_flops"] < plan["cosine_flops"] / 1.2


def test_encoder_ladder_has_several_budgets_per_size_forked_from_one_trunk():
    runs = _runs(PRESETS["small"][1])
    sizes = {(r["model"]["d_model"], r["model"]["n_layers"]) for r in runs}
    assert len(runs) >= 6 and len({r["train"]["tokens"] for r in runs}) >= 3
    trunks = [r for r in runs if not fork_of(r)]
    assert len(trunks) == len(sizes)  # one trunk per size, every other budget a branch
    plan = compute_comparison(runs)
    assert plan["planned_flops"] < plan["cosine_flops"]


def test_data_constrained_arm_still_expands():
    runs = _runs(DATA_CONSTRAINED["small"])
    assert runs and all(math.isfinite(r["train"]["tokens"]) and r["data"]["train_fraction"] < 1 for r in runs)


def test_demo_prints_each_law_and_the_compute_against_cosine():
    from medscale.scaling.cli import demo_summary

    fits = {"objectives": {
        "decoder": {"n_runs": 30, "fits": {"approach_3": {"a": {"value": 0.41, "interval": [0.33, 0.5]}}}},
        "encoder": {"n_runs": 4, "fits": {}, "not_fitted": {"approach_3": "needs at least 6 points; got 4"}}},
        "compute": {"used_flops": 8e12, "cosine_flops": 1.2e13, "ratio": 1.5, "runs": 34, "branches": 20,
                    "convention": "full"}}
    lines = demo_summary(fits)
    assert "a = 0.41 [0.33, 0.5] (95%, width 0.17); 30 runs" in lines[0]
    assert "encoder: Approach 3 not fitted: needs at least 6 points" in lines[1]
    assert "8e+12 FLOPs trained" in lines[2] and "20 of them WSD" in lines[2] and "(1.50x)" in lines[2]
