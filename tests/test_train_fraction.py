"""Repeated-data runs: dataset.train_fraction restricts a run to a fixed subset of train subjects, and every
run records its unique tokens and epochs."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import child_env, tiny_spec, write_spec
from medscale.data.loader import WindowSubset, train_batches, unique_train_tokens
from medscale.data.token_store import TokenWindows
from medscale.scaling.sweep.spec import SpecError, dataset_id, expand, parse_spec
from medscale.scaling.sweep.store import RunStore, run_id


def test_subsets_are_nested_fixed_and_cover_their_subjects(tiny_dataset):
    _, token_dir = tiny_dataset
    windows = TokenWindows(token_dir, "train", 32)
    small, large = WindowSubset(windows, 0.1), WindowSubset(windows, 0.4)
    assert 0 < len(small) < len(large) < len(windows)
    assert set(small.index) <= set(large.index)
    assert np.array_equal(small.index, WindowSubset(TokenWindows(token_dir, "train", 32), 0.1).index)
    assert len(small) == pytest.approx(0.1 * len(windows), rel=0.5)
    assert unique_train_tokens(token_dir, "train", 32, 0.1) == len(small) * 32
    assert unique_train_tokens(token_dir, "train", 32) == len(windows) * 32
    # a run at 0.1 only ever sees the chosen windows: all of its batches over two epochs come from them
    chosen = {tuple(windows[int(i)]["tokens"][:-1]) for i in small.index}
    ds = train_batches(token_dir, "train", seq_len=32, batch_size=4, objective="next_event", seed=1,
                       train_fraction=0.1)
    seen = {tuple(row) for step in range(2 * len(small) // 4) for row in ds[step]["inputs"]}
    assert seen <= chosen and len(seen) > len(chosen) // 2


def test_fraction_axis_expands_runs_and_keeps_full_data_ids(tiny_dataset):
    meds, _ = tiny_dataset
    plain = parse_spec(tiny_spec(meds))
    swept = parse_spec(tiny_spec(meds, **{"dataset.train_fraction": [0.1, 1.0]}))
    assert dataset_id(plain) == dataset_id(swept)  # one prepared dataset for every fraction
    kw = dict(token_dir="t", vocab_size=500, dataset_id="d")
    (full,) = expand(plain, **kw)
    runs = expand(swept, **kw)
    assert len(runs) == 2
    assert run_id(runs[1]) == run_id(full)  # fraction 1.0: the same run as before the axis existed
    assert runs[0]["data"]["train_fraction"] == 0.1 and run_id(runs[0]) != run_id(full)
    for bad in (0.0, 1.5, [0.3, 0.3]):
        with pytest.raises(SpecError, match="train_fraction"):
            parse_spec(tiny_spec(meds, **{"dataset.train_fraction": bad}))


@pytest.mark.slow
def test_a_run_records_unique_tokens_and_epochs(tmp_path, tiny_dataset):
    meds, token_dir = tiny_dataset
    spec = write_spec(tmp_path / "run.yaml", tiny_spec(meds, **{"dataset.train_fraction": 0.05}))
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "train", str(spec), "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = list(RunStore(tmp_path / "out").runs())
    m = json.loads(run.metrics_path.read_text())
    assert m["unique_tokens"] == unique_train_tokens(run.config()["data"]["token_dir"], "train", 32, 0.05)
    assert m["epochs"] == pytest.approx(m["tokens"] / m["unique_tokens"])
    assert m["epochs"] > 1 and m["train_fraction"] == 0.05
    row = RunStore(tmp_path / "out").results_frame().iloc[0]
    assert row["epochs"] == pytest.approx(m["epochs"]) and row["train_fraction"] == 0.05
