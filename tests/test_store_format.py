"""One store format number and one migration module: a store written by an older medscale is read as it is
(reading never writes) and upgraded in place, once, when a launch claims it."""
import json

import yaml

from medscale.atomic import read_json, write_json
from medscale.scaling.sweep import store_format
from medscale.scaling.sweep.step_dir import StepDir
from medscale.scaling.sweep.store import RunStore, config_hash

CONFIG = {"objective": "decoder", "sweep": "s", "budget": None, "param_count": "non_embedding",
          "model": {"vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 16,
                    "causal": True},
          "data": {"token_dir": "/t", "dataset_id": "abc", "seq_len": 16, "batch_size": 4, "mask_prob": 0.15},
          "train": {"lr": 1e-3, "tokens": 640, "steps": 10, "seed": 0},
          "eval": {"n_evals": 2, "batches": 1, "split": "tuning"}, "checkpoint": {"every_steps": 5}}


def _format1_store(root):
    """What medscale wrote before the format number: bare-hash run and dataset folders, status.json, and
    downstream rows without their label source."""
    run = root / "runs" / config_hash(CONFIG)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    write_json(run / "status.json", {"state": "done", "attempts": 1})
    write_json(run / "metrics.json", {"loss": 3.0, "params": 10, "tokens": 640})
    dataset = root / "datasets" / "0123456789ab"
    (dataset / "meds").mkdir(parents=True)
    write_json(dataset / "status.json", {"state": "done"})
    evaluation = root / "downstream" / "eval-aaaaaaaaaaaa"
    evaluation.mkdir(parents=True)
    write_json(evaluation / "status.json", {"state": "done"})
    write_json(evaluation / "identity.json", {"labels": "/labels/task"})
    write_json(evaluation / "rows.json", [{"run_id": "x", "auroc": 0.7}])
    return run, dataset, evaluation


def test_an_older_store_is_read_as_it_is_and_reading_writes_nothing(tmp_path):
    run, dataset, evaluation = _format1_store(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    (row,) = RunStore(tmp_path).results_frame().to_dict("records")
    assert row["status"] == "done" and row["loss"] == 3.0
    assert StepDir(dataset).state() == "done"
    assert store_format.rows_with_labels(evaluation, "rows.json") == [{"run_id": "x", "auroc": 0.7,
                                                                        "labels": "/labels/task"}]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert store_format.store_format(tmp_path) == 1


def test_claiming_an_older_store_upgrades_it_once(tmp_path):
    run, dataset, evaluation = _format1_store(tmp_path)
    store = RunStore(tmp_path, say=lambda m: None).claim()
    assert store_format.store_format(tmp_path) == store_format.FORMAT
    (moved,) = list(store.runs())
    assert moved.run_id == f"decoder-{run.name}" and not run.exists()
    assert moved.state() == "done" and moved.status()["attempts"] == 1 and moved.metrics()["loss"] == 3.0
    assert (moved.path / "status.jsonl").exists() and not (moved.path / "status.json").exists()
    assert not dataset.exists() and StepDir(tmp_path / "datasets" / f"simulator-{dataset.name}").state() == "done"
    assert read_json(evaluation / "rows.json") == [{"run_id": "x", "auroc": 0.7, "labels": "/labels/task"}]
    assert store.ensure(CONFIG).path == moved.path  # the sweep that owns it finds it under its current id
    snapshot = {str(p): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert store_format.upgrade_store(tmp_path) == 0  # once: a current store is left as it is
    assert {str(p): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_a_run_an_older_medscale_is_still_running_is_left_alone(tmp_path):
    run, _, _ = _format1_store(tmp_path)
    lease = StepDir(run).acquire_lease()
    try:
        store_format.upgrade_store(tmp_path)
        assert run.is_dir() and store_format.store_format(tmp_path) == 1  # tried again at the next opening
    finally:
        lease.release()
    store_format.upgrade_store(tmp_path)
    assert not run.exists() and store_format.store_format(tmp_path) == store_format.FORMAT


def test_a_new_store_is_written_in_the_current_format(tmp_path):
    RunStore(tmp_path / "new").claim()
    assert json.loads((tmp_path / "new" / "store.json").read_text()) == {"format": store_format.FORMAT}
