"""A sweep spec that names downstream tasks: the sweep evaluates its runs, the results land in the
run store, and `medscale analyze` puts them in the report."""
import subprocess
import sys

import pandas as pd
import pytest

from conftest import child_env, tiny_spec, write_spec

pytestmark = pytest.mark.slow


def test_sweep_with_downstream_then_analyze(tmp_path, tiny_dataset):
    meds, _ = tiny_dataset
    spec = tiny_spec(meds, **{"grid.params": [{"d_model": 32, "n_layers": 1, "n_heads": 1},
                                              {"d_model": 32, "n_layers": 2, "n_heads": 1}]})
    spec["downstream"] = {"tasks": ["med_start_30d"], "modes": ["probe", "lightgbm", "ceiling"],
                          "max_samples": 200, "n_boot": 20, "test_splits": ["tuning", "held_out"]}
    path = write_spec(tmp_path / "sweep.yaml", spec)
    env = child_env()
    out = tmp_path / "out"
    sweep = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "sweep", str(path), "--out", str(out)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    table = pd.read_csv(out / "downstream.csv")
    results = pd.read_parquet(out / "results.parquet")
    probed = set(table.loc[table["mode"] == "probe", "run_id"])
    assert probed == set(results["run_id"])  # every run of the sweep was evaluated
    assert {"lightgbm", "ceiling"} <= set(table["mode"])
    auroc = table[(table["metric"] == "auroc") & (table["mode"] == "probe")]
    assert auroc["value"].between(0, 1).all() and (auroc["low"] <= auroc["value"]).all()

    analyze = subprocess.run([sys.executable, "-m", "medscale.scaling.cli", "analyze", str(out), "--n-boot", "20"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert analyze.returncode == 0, analyze.stdout + analyze.stderr
    html = (out / "report" / "index.html").read_text()
    assert "med_start_30d" in html and "Downstream" in html
