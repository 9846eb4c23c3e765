"""Hostile run stores (issue 19): every state a crash or a stray edit leaves is readable on the next
run, one sweep name never pools two datasets, and what would make every run fail is refused before
launch."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import tiny_spec, write_spec
from medscale.atomic import write_json
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.spec import SpecError
from medscale.scaling.sweep.store import RunStore

CONFIG = {
    "sweep": "s", "objective": "decoder", "budget": None,
    "model": {"vocab_size": 100, "d_model": 32, "n_layers": 1, "n_heads": 1, "d_ff": 96, "max_len": 64, "causal": True},
    "data": {"token_dir": "/a/tokens", "dataset_id": "abc", "seq_len": 32, "batch_size": 4, "mask_prob": 0.15},
    "train": {"tokens": 1280, "steps": 10, "seed": 0, "lr": 1e-3},
    "eval": {"n_evals": 2, "batches": 1}, "checkpoint": {"every_steps": 5},
}
METRICS = {"loss": 2.5, "params": 1234, "tokens": 1280, "compute": 1e9}


def _finished_run(root: Path, said: list[str]):
    store = RunStore(root, say=said.append)
    run = store.ensure(CONFIG)
    write_json(run.metrics_path, METRICS)
    pd.DataFrame({"step": [5, 10], "tokens": [640, 1280], "loss": [3.0, 2.5]}).to_csv(run.curve_path, index=False)
    run.set_status("done", attempts=1)
    return store, run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, len(path.read_bytes()) // 2)])


# (case, what is damaged, how) -> the next reader copes, the next sweep repairs
CORRUPT_CASES = [
    ("truncated config.yaml", "config.yaml", _truncate),
    ("config.yaml emptied", "config.yaml", lambda p: p.write_text("")),
    ("config.yaml a folder", "config.yaml", lambda p: (p.unlink(), p.mkdir())),
    ("truncated metrics.json", "metrics.json", _truncate),
    ("metrics.json not an object", "metrics.json", lambda p: p.write_text("[1, 2]\n")),
    ("status.jsonl garbage", "status.jsonl", lambda p: p.write_bytes(b"\x00\xff{not json\n")),
    ("truncated legacy status.json", "status.json", lambda p: p.write_text('{"state": "do')),
    ("truncated lease.json", "lease.json", lambda p: p.write_text('{"token": ')),
    ("curve.csv garbage", "curve.csv", lambda p: p.write_bytes(b"\x00\x01\x02")),
]


@pytest.mark.parametrize("case,name,damage", CORRUPT_CASES, ids=[c[0] for c in CORRUPT_CASES])
def test_corrupt_run_files_are_read_and_repaired_with_a_message(tmp_path, case, name, damage):
    said: list[str] = []
    store, run = _finished_run(tmp_path, said)
    damage(run.path / name)

    frame = store.results_frame()  # what `analyze` reads: no exception
    store.curves_frame()
    if name == "config.yaml":
        assert frame.empty and any("skipping run" in m for m in said)
    elif name == "metrics.json":
        assert frame.loc[0, "status"] == "damaged" and any("left out of the fits" in m for m in said)
    elif name == "status.jsonl":
        assert frame.loc[0, "status"] == "pending"  # no readable history: it runs again
    else:
        assert frame.loc[0, "status"] == "done" and frame.loc[0, "loss"] == 2.5

    said.clear()
    repaired = store.ensure(CONFIG)  # what the next sweep launch does
    assert repaired.config() == CONFIG
    if name == "config.yaml":
        assert any("rewritten from the spec" in m for m in said)
    if name == "metrics.json":
        assert repaired.state() == "pending" and "recomputed from the last checkpoint" in repaired.status()["error"]
        assert (run.path / "metrics.json.corrupt").exists() and not run.metrics_path.exists()
        assert any("resuming the run from its last checkpoint" in m for m in said)
    assert store.results_frame().loc[0, "run_id"] == run.run_id


def test_damaged_prepared_dataset_is_tokenized_again(tmp_path, tiny_dataset):
    from medscale.scaling.sweep.dataset import prepare_dataset
    from medscale.scaling.sweep.spec import parse_spec

    spec = parse_spec(tiny_spec(tiny_dataset[0]))
    first = prepare_dataset(spec, tmp_path, say=lambda m: None)
    _truncate(first.token_dir / "manifest.json")
    said: list[str] = []
    again = prepare_dataset(spec, tmp_path, say=said.append)
    assert again.manifest == first.manifest and any("damaged" in m for m in said)


# ---------------------------------------------------------------------------------------------
# one sweep name, one dataset
# ---------------------------------------------------------------------------------------------

def test_store_refuses_to_pool_one_sweep_name_over_two_datasets(tmp_path, tiny_dataset):
    from medscale.scaling.pipeline import expand_over, load_spec_and_data

    meds = Path(shutil.copytree(tiny_dataset[0], tmp_path / "meds"))
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "a.yaml", tiny_spec(meds))
    spec, prepared = load_spec_and_data(spec_path, out)
    store = RunStore(out)
    for config in expand_over(spec, prepared, spec_path):
        store.ensure(config)
    (out / "sweeps").mkdir()
    (out / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(spec.model_dump()))

    other_tokenizer = write_spec(tmp_path / "b.yaml", tiny_spec(meds, **{"dataset.tokenizer": {"min_count": 1}}))
    with pytest.raises(UserError, match=rf"already holds runs of sweep 'tiny' over dataset {prepared.dataset_id} "
                                        r"\(.*min_count': 5.*\); this spec's dataset is [0-9a-f]+ \(.*min_count': 1"):
        load_spec_and_data(other_tokenizer, out)
    shard = meds / "data" / "train" / "0000.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)  # new data at the same path
    with pytest.raises(UserError, match="The data at that path or the tokenizer settings changed"):
        load_spec_and_data(spec_path, out)


# ---------------------------------------------------------------------------------------------
# refused before launch (exit 2): what would make every run fail
# ---------------------------------------------------------------------------------------------

def _without_tuning(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "data" / "tuning")
    splits = pq.read_table(dst / "metadata" / "subject_splits.parquet")
    pq.write_table(splits.filter(pc.not_equal(splits["split"], "tuning")),
                   dst / "metadata" / "subject_splits.parquet")
    return dst


BEFORE_LAUNCH = [
    ("no tuning split for eval.split tuning", {}, r"eval.split 'tuning': .* has no 'tuning' subjects \(splits present: "
                                                 r"held_out, train\)"),
    ("train split smaller than one batch", {"optimizer.batch_size": 65536, "grid.tokens": [40 * 65536 * 32]},
     r"the 'train' split holds [0-9,]+ tokens, [0-9,]+ windows of model.seq_len 32, fewer than one batch of 65536"),
]


@pytest.mark.parametrize("case,overrides,error", BEFORE_LAUNCH, ids=[c[0] for c in BEFORE_LAUNCH])
def test_dataset_that_cannot_serve_the_runs_is_refused_before_launch(tmp_path, tiny_dataset, case, overrides, error):
    from medscale.scaling.pipeline import load_spec_and_data

    meds = _without_tuning(tiny_dataset[0], tmp_path / "meds") if "tuning" in case else tiny_dataset[0]
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_spec(meds, **overrides))
    with pytest.raises(SpecError, match=error):
        load_spec_and_data(spec_path, tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()  # nothing launched


def test_eval_on_held_out_works_without_a_tuning_split(tmp_path, tiny_dataset):
    from medscale.scaling.pipeline import load_spec_and_data

    meds = _without_tuning(tiny_dataset[0], tmp_path / "meds")
    spec, prepared = load_spec_and_data(write_spec(tmp_path / "s.yaml", tiny_spec(meds, **{"eval.split": "held_out"})),
                                        tmp_path / "out")
    assert "tuning" not in prepared.manifest["splits"]
