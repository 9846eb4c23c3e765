"""An external MEDS dataset nobody here wrote (meds-testing-helpers' static sample, with its own label
folder): tokenized with each tokenizer scheme, one tiny decoder trained on it from a YAML spec, evaluated on
its label folder with `medscale downstream --labels`, predictions checked with meds-evaluation, exported to
safetensors and loaded back. Its quirks: static rows with no time (EYE_COLOR, HEIGHT), four codes that
matter, six subjects, label files named `*.parquet.parquet`, and (with its birth rows removed) no birth.
Its generator's `sample` spec adds a dataset with no birth events at all, one unsplit data folder and gaps of
years between events (where the interval time scheme keeps absolute time)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from medscale.data.token_store import tokenize_dataset
from medscale.data.tokenizer import Tokenizer, TokenizerConfig

SCHEMES = {
    "bins": TokenizerConfig(min_count=1, n_value_bins=4),
    "interval": TokenizerConfig(min_count=1, n_value_bins=4, time_scheme="interval"),
    "fused_no_demographics": TokenizerConfig(min_count=1, n_value_bins=4, value_scheme="fused", demographics=False),
    "no_values": TokenizerConfig(min_count=1, n_value_bins=0),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS

    root = tmp_path_factory.mktemp("external") / "meds"
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(root)
    return root


def _rows(root: Path, split: str) -> pd.DataFrame:
    return pl.read_parquet(sorted((root / "data" / split).glob("*.parquet"))).to_pandas()


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_tokenizer_scheme_keeps_every_event_of_the_sample(sample, tmp_path, scheme):
    cfg = SCHEMES[scheme]
    out = tokenize_dataset(sample, tmp_path / scheme, cfg, workers=1)
    manifest = json.loads((out / "manifest.json").read_text())
    tok = Tokenizer.load(out)
    train = _rows(sample, "train")
    # every MEDS row but the birth rows is one event (static rows included), whatever the scheme
    events = int((train["code"] != "MEDS_BIRTH").sum())
    assert manifest["splits"]["train"]["events"] == events
    assert manifest["splits"]["train"]["events_per_token"] == pytest.approx(events / manifest["splits"]["train"]["tokens"])
    tokens = np.load(out / "held_out" / "tokens.npy")
    decoded = tok.decode(tokens)
    codes = [e["code"] for e in decoded if "code" in e]
    held = _rows(sample, "held_out")
    assert sorted(codes) == sorted(held.loc[held["code"] != "MEDS_BIRTH", "code"])
    assert tokens[0] == 2 and tokens[-1] == 3   # BOS ... EOS
    prefix = [e["token"] for e in decoded if "token" in e and e["token"].startswith(("SEX//", "AGE//"))]
    if cfg.demographics:
        assert prefix == ["SEX//UNKNOWN", "AGE//20-25"]   # born 1986-07-20, first event 2010-06-03
    else:
        assert prefix == []
    valued = [e for e in decoded if e.get("code") in ("HR", "TEMP")]
    assert all(("value_bin" in e) == (cfg.n_value_bins > 0) for e in valued)


def test_interval_tokens_keep_absolute_time_past_the_last_bin(sample):
    cfg_bins, cfg_int = SCHEMES["bins"], SCHEMES["interval"]
    table = pq.read_table(sample / "data" / "held_out" / "0.parquet")
    tok_b = Tokenizer.fit([table], cfg_bins)
    tok_i = Tokenizer.fit([table], cfg_int)
    sid = table["subject_id"][0].as_py()
    t0 = pd.Timestamp("2010-06-03 14:54:38")
    far = pa.table({"subject_id": pa.array([sid, sid], pa.int64()),
                    "time": pa.array([t0, t0 + pd.Timedelta(days=5 * 365 + 40)], pa.timestamp("us")),
                    "code": ["HR", "HR"], "numeric_value": pa.array([90.0, 91.0])})
    names_b = [tok_b.vocab[t] for t in tok_b.encode_table(far)[0] if tok_b.vocab[t].startswith("TIME//")]
    names_i = [tok_i.vocab[t] for t in tok_i.encode_table(far)[0] if tok_i.vocab[t].startswith("TIME//")]
    assert names_b == ["TIME//730d+"]
    # 1865 days = 2 x 730 + 405: two unit tokens, then the 365d-730d bin
    assert names_i == ["TIME//730d", "TIME//730d", "TIME//365d-730d"]


def test_subjects_without_birth_get_unknown_age(sample):
    table = pq.read_table(sample / "data" / "train" / "0.parquet")
    no_birth = table.filter(pa.compute.not_equal(table["code"], "MEDS_BIRTH"))
    tok = Tokenizer.fit([no_birth], SCHEMES["bins"])
    tokens, subjects, lengths = tok.encode_table(no_birth)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    assert [tok.vocab[tokens[s + 2]] for s in starts] == ["AGE//UNKNOWN"] * len(subjects)


# ---------------------------------------------------------------------------------------------------
# train from YAML, downstream on the sample's own label folder, meds-evaluation, export
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    """One tiny decoder on the sample, its dataset prepared from a YAML spec with a non-default tokenizer."""
    from medscale.scaling.pipeline import expand_over, load_spec_and_data
    from medscale.scaling.sweep.store import RunStore
    from medscale.scaling.run.train import execute_run

    base = tmp_path_factory.mktemp("external_run")
    spec = {"name": "external", "objective": "decoder",
            "dataset": {"meds": str(sample), "tokenizer": {"min_count": 1, "value_bins": 4, "time_scheme": "interval"}},
            "model": {"seq_len": 8},
            "grid": {"mode": "ladder", "params": [{"d_model": 16, "n_layers": 1, "n_heads": 1}], "tokens": [12 * 8 * 8]},
            "optimizer": {"batch_size": 8, "lr": 3e-3},
            "eval": {"n_evals": 3, "batches": 1, "split": "held_out"}, "checkpoint": {"every_steps": 100}}
    path = base / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    store_root = base / "runs"
    parsed, prepared = load_spec_and_data(path, store_root)
    (config,) = expand_over(parsed, prepared, path)
    run = RunStore(store_root).ensure(config)
    assert execute_run(run, devices=1) == "done"
    return store_root, run, prepared


def test_run_records_events_and_tensorboard_scalars(trained):
    from medscale.scaling.run.tracking import read_scalars

    _, run, prepared = trained
    metrics = run.metrics()
    per_token = prepared.manifest["splits"]["train"]["events_per_token"]
    assert prepared.manifest["config"]["time_scheme"] == "interval"
    assert metrics["events"] == pytest.approx(metrics["tokens"] * per_token)
    scalars = read_scalars(run.path / "tb")
    assert {"loss/held_out", "loss/train", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(scalars)
    curve = pd.read_csv(run.curve_path)
    assert [s for s, _ in scalars["loss/held_out"]] == curve["step"].tolist()
    np.testing.assert_allclose([v for _, v in scalars["loss/held_out"]], curve["loss"], rtol=1e-6)


def test_downstream_on_the_label_folder_matches_meds_evaluation(trained, sample):
    from meds_evaluation.evaluate import evaluate_binary_classification

    from medscale.scaling.cli import app

    store_root, run, _ = trained
    spec = store_root.parent / "downstream.yaml"
    spec.write_text(yaml.safe_dump({"modes": ["probe", "lightgbm"], "n_boot": 20, "max_samples": 100}))
    result = CliRunner().invoke(app, ["downstream", str(store_root), "--spec", str(spec),
                                      "--labels", str(sample / "task_labels")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(store_root / "downstream.csv")
    assert set(table["task"]) == {"boolean_value_task"} and set(table["mode"]) == {"probe", "lightgbm"}
    assert not (table["mode"] == "ceiling").any()   # no ground truth in real data
    probe = table[(table["mode"] == "probe") & (table["metric"] == "auroc")].iloc[0]
    (path,) = (store_root / "predictions" / run.run_id / "boolean_value_task").glob(
        "probe_budget-all_seed-0_labels-*.parquet")   # the label folder's source in the name
    predictions = pl.read_parquet(path)
    assert predictions.columns == ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                                   "predicted_boolean_probability"]
    assert predictions["subject_id"].unique().to_list() == [1500733]   # the held-out subject
    theirs = evaluate_binary_classification(predictions)["samples_equally_weighted"]["roc_auc_score"]
    assert theirs == pytest.approx(probe["value"], abs=1e-6)
    assert len(list((store_root / "predictions").rglob("*.parquet"))) == 2   # probe and LightGBM


def test_export_round_trips_the_logits(trained, tmp_path):
    import jax.numpy as jnp
    from flax import nnx

    from medscale.scaling.cli import app
    from medscale.scaling.downstream.model import load_run_model
    from medscale.scaling.run.export import load_exported, read_safetensors

    _, run, prepared = trained
    result = CliRunner().invoke(app, ["export", str(run.path), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    model, tokenizer, config = load_exported(tmp_path / "export")
    tensors, meta = read_safetensors(tmp_path / "export" / "model.safetensors")
    assert meta["run_id"] == run.run_id and config["objective"] == "decoder"
    assert json.loads((tmp_path / "export" / "vocab.json").read_text())["[BOS]"] == 2
    assert tokenizer.vocab == Tokenizer.load(prepared.token_dir).vocab
    original = load_run_model(run)
    reference = nnx.merge(original.graphdef, original.params)
    tokens = jnp.asarray(np.load(prepared.token_dir / "train" / "tokens.npy")[:8][None, :])
    segments = jnp.zeros_like(tokens)
    np.testing.assert_array_equal(np.asarray(model(tokens, segments)), np.asarray(reference(tokens, segments)))
    assert sum(t.size for t in tensors.values()) == config["params_total"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """meds-testing-helpers' generator (its `sample` spec): 60 subjects, no birth events, 11 codes, static
    rows, shards not split by folder, gaps of years between events."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("generated") / "meds"
    script = Path(sys.executable).with_name("build_sample_MEDS_dataset")
    subprocess.run([str(script), "seed=1", "N_subjects=60", "do_overwrite=False", f"output_dir={root}",
                    "dataset_spec/data_generator=sample"], check=True, capture_output=True)
    return root


@pytest.mark.parametrize("scheme", ["bins", "interval"])
def test_generated_sample_without_births_and_with_long_gaps(generated, tmp_path, scheme):
    out = tokenize_dataset(generated, tmp_path / scheme, SCHEMES[scheme], workers=1)
    tok = Tokenizer.load(out)
    names = np.array(tok.vocab)[np.concatenate([np.load(out / s / "tokens.npy") for s in ("train", "tuning", "held_out")])]
    rows = pl.read_parquet(sorted((generated / "data").rglob("*.parquet"))).filter(pl.col("time").is_not_null())
    gap_days = (rows.group_by("subject_id", maintain_order=True)
                .agg(pl.col("time").diff().dt.total_microseconds() / 86_400e6)["time"].explode().drop_nulls().to_numpy())
    assert (names == "AGE//UNKNOWN").sum() == 60 and not np.isin(names, [t for t in tok.age_tokens if t != "AGE//UNKNOWN"]).any()
    if scheme == "bins":
        assert (names == "TIME//730d+").sum() == (gap_days >= 730).sum() > 0
    else:   # the unit tokens add up the whole 730-day periods of every gap: absolute time is kept
        assert (names == "TIME//730d").sum() == np.floor(gap_days / 730).sum() > (gap_days >= 730).sum()
