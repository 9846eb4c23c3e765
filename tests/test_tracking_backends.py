"""The W&B and MLflow mirrors of scaling/run/tracking.py, for real and without the network.

MLflow logs to a local file store (`file:` tracking URI; MLflow 3 keeps it behind MLFLOW_ALLOW_FILE_STORE) and
its own client reads the runs back; W&B runs in offline mode (WANDB_MODE=offline) and its run file
(`wandb/offline-run-*/run-<id>.wandb`, a LevelDB-style log of `Record` protocol buffers) is read back
record by record. Both are asked for as a training run asks for them, through MEDSCALE_TRACKING.
"""
from pathlib import Path

import pytest

from medscale.scaling.run.tracking import TRACKING_ENV, RunTracker, read_scalars

# dyadic values: float32 and JSON keep them exactly
LOGGED = [(4, {"loss/train": 2.5, "loss/held_out": 2.75, "lr": 0.0625, "mfu": None}),
          (8, {"loss/train": 2.0, "loss/held_out": 2.25, "lr": 0.03125, "mfu": 0.125})]


def _log_a_run(tmp_path: Path, run_id: str) -> None:
    tracker = RunTracker(tmp_path / "run", run_id, {"sweep": "tracking-test", "lr": 0.01})
    assert len(tracker.mirrors) == 1, "the tracker asked for did not start"
    for step, values in LOGGED:
        tracker.log(step, values)
    tracker.close()
    assert read_scalars(tmp_path / "run")["loss/train"] == [(4, 2.5), (8, 2.0)]   # TensorBoard still written


def _expected(tag: str) -> list[tuple[int, float]]:
    return [(step, values[tag]) for step, values in LOGGED if values.get(tag) is not None]


def test_mlflow_file_store_receives_every_metric(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow-skinny is in the test extra")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv(TRACKING_ENV, "mlflow")
    _log_a_run(tmp_path, "decoder-mlflow1")

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["decoder-mlflow1"]
    assert runs[0].info.status == "FINISHED"
    for tag in ("loss/train", "loss/held_out", "lr", "mfu"):
        history = client.get_metric_history(runs[0].info.run_id, tag)
        assert [(m.step, m.value) for m in history] == _expected(tag), tag


def wandb_records(path: Path) -> list[bytes]:
    """The payloads of a W&B run file: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of records,
    each a 7-byte header (crc32, uint16 length, type: 1 full, 2 first, 3 middle, 4 last) and its data."""
    blob, block = path.read_bytes(), 32768
    assert blob[:4] == b":W&B", f"{path}: not a W&B run file"
    at, out, part = 7, [], b""
    while at + 7 <= len(blob):
        if block - at % block < 7:    # a block's tail too short for a header is padding
            at += block - at % block
            continue
        length, kind = int.from_bytes(blob[at + 4: at + 6], "little"), blob[at + 6]
        part += blob[at + 7: at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def _wandb_history(run_file: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_id, history = "", {}
    for data in wandb_records(run_file):
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "run":
            run_id = record.run.run_id
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    history.setdefault(key, []).append((int(items["_step"]), float(value)))
    return run_id, history


def _wait_for_the_exit_record(run_file: Path, timeout_s: float = 60.0) -> None:
    """W&B's service process may still be writing the run file when `finish()` has returned (seen under
    pytest-xdist: the file without its run record at first, whole a moment later); a run file is complete,
    for `wandb sync` as for this test, once it holds the exit record."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    def kinds() -> set:
        out = set()
        try:
            for data in wandb_records(run_file):
                record = pb.Record()
                record.ParseFromString(data)
                out.add(record.WhichOneof("record_type"))
        except Exception:  # noqa: BLE001 - a record cut off mid-write: not complete yet
            pass
        return out

    deadline = time.monotonic() + timeout_s
    while "exit" not in kinds() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_wandb_offline_run_file_holds_every_metric(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is in the test extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv(TRACKING_ENV, "wandb")
    _log_a_run(tmp_path, "decoder-wandb1")

    files = sorted(tmp_path.glob("wandb/offline-run-*-decoder-wandb1/run-decoder-wandb1.wandb"))
    assert len(files) == 1
    _wait_for_the_exit_record(files[0])
    run_id, history = _wandb_history(files[0])
    assert run_id == "decoder-wandb1"
    for tag in ("loss/train", "loss/held_out", "lr", "mfu"):
        assert history.get(tag) == _expected(tag), tag


def test_a_tracker_that_cannot_start_is_skipped_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_ENV, "neptune")
    with pytest.warns(UserWarning, match="unknown tracker 'neptune'"):
        tracker = RunTracker(tmp_path / "run", "decoder-x", {})
    assert tracker.mirrors == []
