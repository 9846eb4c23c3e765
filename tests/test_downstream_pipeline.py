"""The downstream stage end to end on a real (tiny) size ladder: trained decoders, every mode, the results
table's format and resumability, and the saturation ranking of a simple versus a long-history task."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_spec
from medscale.scaling.sweep.store import RunStore

pytestmark = pytest.mark.slow
SIMPLE, LONG = "med_start_30d", "dx_heart_failure_1y"   # data/ground_truth.py: 'simple' and 'long_history'
SHAPES = [(16, 1, 1), (32, 2, 1), (64, 2, 2), (96, 3, 3)]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """A 2,000-subject cohort and four decoders of growing size trained on it with scaling.train."""
    from medscale.data.simulator import generate_cohort
    from medscale.data.token_store import tokenize_dataset
    from medscale.scaling.sweep.spec import expand, parse_spec
    from medscale.scaling.run.train import execute_run

    base = tmp_path_factory.mktemp("downstream")
    meds = generate_cohort(base / "meds", 2000, 0, workers=1)
    tokens = tokenize_dataset(meds, base / "tokens", workers=1)
    vocab = json.loads((tokens / "manifest.json").read_text())["vocab_size"]
    spec = tiny_spec(meds, **{"model.seq_len": 64, "optimizer.batch_size": 16, "optimizer.lr": 3e-3,
                              "grid.tokens": [120 * 16 * 64], "checkpoint.every_steps": 1000,
                              "grid.params": [{"d_model": d, "n_layers": l, "n_heads": h} for d, l, h in SHAPES]})
    store = RunStore(base / "store")
    for config in expand(parse_spec(spec), token_dir=str(tokens), vocab_size=vocab, dataset_id="ladder"):
        assert execute_run(store.ensure(config), devices=1) == "done"
    return store.root


def _spec(**over):
    from medscale.scaling.downstream.evaluate import DownstreamSpec

    raw = {"tasks": [SIMPLE, LONG], "modes": ["probe", "lightgbm", "ceiling"], "max_samples": 1500,
           "test_splits": ["tuning", "held_out"], "n_boot": 50}
    raw.update(over)
    return DownstreamSpec.model_validate(raw)


def test_every_mode_lands_in_the_store_in_the_analysis_format(ladder):
    from medscale.scaling.downstream.evaluate import COLUMNS, evaluate_store, read_downstream

    spec = _spec(modes=["probe", "finetune", "scratch", "zero_shot", "lightgbm", "ceiling"],
                 label_budgets=[8, "all"], finetune={"steps": 8, "max_runs": 1},
                 zero_shot={"k": 2, "max_new_tokens": 16, "max_samples": 8, "tasks": [LONG], "batch_prompts": 4})
    df = evaluate_store(ladder, spec)
    assert list(df.columns) == COLUMNS
    assert set(df["mode"]) == {"probe", "finetune", "scratch", "zero_shot", "lightgbm", "ceiling"}
    assert len(df[(df["mode"] == "probe")]["run_id"].unique()) == len(SHAPES)
    assert len(df[(df["mode"] == "finetune")]["run_id"].unique()) == 1
    assert set(df[df["mode"] == "zero_shot"]["task"]) == {LONG}
    zs = df[df["mode"] == "zero_shot"].groupby("metric")["value"].mean()
    assert {"auroc_k1", "auroc_k2", "censored", "rollout_tokens", "rollout_cap", "rollout_capped"} <= set(zs.index)
    assert zs["rollout_tokens"] <= zs["rollout_cap"] == 16 and 0 <= zs["censored"] <= 1
    # every step keeps its paired draws and its subgroup metrics
    from medscale.scaling.downstream.evaluate import compile_subgroups, read_draws

    draws = read_draws(ladder, "auroc")
    probe_draws = draws[(draws["mode"] == "probe") & (draws["task"] == SIMPLE)]
    assert probe_draws["resample"].nunique() == 1 and probe_draws["run_id"].nunique() == len(SHAPES)
    assert (probe_draws.groupby("run_id").size() == 50).all()
    sub = compile_subgroups(ladder)
    assert {"sex", "age"} <= set(sub["kind"]) and {"F", "M"} <= set(sub[sub["kind"] == "sex"]["group"])
    probe = df[df["mode"] == "probe"]
    assert set(probe["label_budget"]) == {"8", "all"}
    few = probe[(probe["label_budget"] == "8")]["n_fit"]
    assert (few <= 16).all()   # k per class
    auroc = df[(df["metric"] == "auroc") & (df["mode"] != "zero_shot")]  # 8 rolled-out samples may hold no case
    assert auroc[["value", "low", "high"]].notna().all().all()
    # a scratch model that early stopping never preferred to its prevalence-only start predicts a
    # constant: AUROC 0.5 in every resample, an honest zero-width interval; every other row has a width
    constant = (auroc["mode"] == "scratch") & (auroc["value"] == 0.5) & (auroc["low"] == 0.5) & (auroc["high"] == 0.5)
    assert ((auroc["low"] < auroc["high"]) | constant).all()
    assert ((auroc["low"] - 0.05 <= auroc["value"]) & (auroc["value"] <= auroc["high"] + 0.05)).all()  # need not be centred
    ceiling = df[(df["mode"] == "ceiling") & (df["metric"] == "auroc")].set_index("task")["value"]
    assert (ceiling > 0.75).all()
    rows = df[df["mode"].isin(["probe", "lightgbm"]) & (df["metric"] == "auroc")]
    np.testing.assert_allclose(rows["gap"], rows["ceiling"] - rows["value"])
    assert (df[df["mode"].isin(["lightgbm", "ceiling"])]["params"].isna()).all()
    on_disk = read_downstream(ladder)
    assert len(on_disk) == len(df) and (ladder / "downstream.parquet").exists()

    # resumable: a rerun redoes no evaluation (no step's rows are rewritten, none is added); a dropped
    # result is recomputed alone
    written = {p: p.stat().st_mtime_ns for p in (ladder / "downstream").glob("eval-*/rows.json")}
    again = evaluate_store(ladder, spec)
    assert len(again) == len(df)
    assert {p: p.stat().st_mtime_ns for p in (ladder / "downstream").glob("eval-*/rows.json")} == written
    # each evaluation is a step folder (downstream/eval-<hash>/): drop the probe's 8-shot ones
    import shutil

    steps = [p.parent for p in (ladder / "downstream").glob("eval-*/identity.json")]
    doomed = [s for s in steps if json.loads((s / "identity.json").read_text())["mode"] == "probe"
              and json.loads((s / "identity.json").read_text())["label_budget"] == "8"]
    assert doomed
    for s in doomed:
        shutil.rmtree(s)
    redone = evaluate_store(ladder, spec)
    assert len(redone) == len(df)
    key = ["run_id", "task", "mode", "label_budget", "seed", "metric"]
    merged = redone.merge(on_disk, on=key, suffixes=("", "_old"))
    np.testing.assert_allclose(merged["value"], merged["value_old"], atol=1e-9)  # deterministic


def test_the_simple_task_saturates_at_a_smaller_size_than_the_long_history_task(ladder):
    from medscale.analysis.saturation import fit_saturation
    from medscale.scaling.downstream.evaluate import evaluate_store, saturation_input

    df = saturation_input(evaluate_store(ladder, _spec()))
    probe = df[(df["mode"] == "probe") & (df["metric"] == "auroc")].sort_values("params")
    assert probe["params"].nunique() == len(SHAPES)
    result = fit_saturation(df, metric="auroc", primary=("probe",), n_boot=50)
    ranking = result.ranking()
    assert list(ranking["task"]) == [SIMPLE, LONG], (ranking, probe[["task", "params", "value"]])
    # the long-history task's probe keeps gaining: its largest model beats its smallest
    long = probe[probe["task"] == LONG]["value"].to_numpy()
    assert long[-1] > long[0]


def test_fine_tuning_is_not_below_the_probe_of_the_same_model_beyond_noise(ladder):
    """LP-FT: the head starts from the probe and the best state on held-back subjects is kept, so on test
    subjects the fine-tuned model can trail its own probe only by noise (paired interval of the difference)."""
    from medscale.analysis.paired import draw_matrix
    from medscale.scaling.downstream.evaluate import evaluate_store, read_draws

    spec = _spec(tasks=[SIMPLE], modes=["probe", "finetune"], seeds=[7],
                 finetune={"steps": 24, "lr": 1e-3, "max_runs": 2})
    df = evaluate_store(ladder, spec)
    auroc = df[(df["metric"] == "auroc") & (df["task"] == SIMPLE) & (df["seed"] == 7) & (df["label_budget"] == "all")]
    tuned = auroc[auroc["mode"] == "finetune"]
    assert len(tuned) == 2
    draws = read_draws(ladder, "auroc")
    for rid in tuned["run_id"]:
        pair = draws[(draws["run_id"] == rid) & (draws["task"] == SIMPLE) & (draws["seed"] == 7)]
        both = draw_matrix(pair.assign(run_id=pair["mode"]), ["probe", "finetune"])
        assert both is not None
        diff = both[:, 1] - both[:, 0]
        assert np.percentile(diff, 97.5) >= 0, (rid, np.percentile(diff, [2.5, 50, 97.5]))
