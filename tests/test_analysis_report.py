"""The HTML report: every referenced file exists, images are not blank, fits.json is valid."""
import json
import re

import numpy as np
import pandas as pd
from matplotlib.image import imread

from medscale.analysis import synthetic
from medscale.analysis.report import write_report


def test_report_is_complete(tmp_path):
    iso = synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=7, noise=0.005)
    ladder, curves = synthetic.curves_table(sizes=np.geomspace(2e7, 2e9, 8), points=15, max_compute=1e20)
    ladder["run_id"] = "L" + ladder["run_id"]
    curves["run_id"] = "L" + curves["run_id"]
    failed = iso.head(1).assign(run_id="bad", status="diverged", loss=np.nan)
    results = pd.concat([iso, ladder, failed], ignore_index=True)
    index = write_report(tmp_path / "rep", results=results, curves=curves, downstream=synthetic.downstream_table(),
                         budget=1e21, max_tokens=2e10, n_boot=20, title="test <report>")
    text = index.read_text()
    assert "test &lt;report&gt;" in text and "Summary" in text
    assert "Compute-optimal allocation at 1e+21 FLOPs" in text and "token-limited" in text
    refs = re.findall(r"(?:src|href)='([^']+)'", text)
    assert any(r.endswith(".png") for r in refs) and any("saturation_" in r for r in refs)
    for r in refs:
        assert not r.startswith(("/", "http")), r
        assert (index.parent / r).is_file(), r
    for png in index.parent.glob("*.png"):
        img = imread(png)[..., :3]
        assert img.std() > 0.02, png
        assert (img.min(axis=-1) < 0.9).mean() > 0.01, png  # more than 1% of pixels are not white
    fits = json.loads((index.parent / "fits.json").read_text())
    dec = fits["objectives"]["decoder"]["fits"]
    assert {"approach_1", "approach_2", "approach_3"} <= set(dec)
    alloc = dec["approach_3"]["allocation"]
    assert alloc["token_limited"] and alloc["d_opt"]["value"] == 2e10
    assert [r["task"] for r in fits["saturation"]["ranking"]] == ["fast", "slow"]
    # the law families: their figure is shown, their choice and N_opt at the budget are in fits.json
    fam = fits["objectives"]["decoder"]["families"]
    assert "decoder_families.png" in refs and fam["chosen"] in fam["weights"]
    assert fam["budget"] == 1e21 and fam["n_opt"]["interval"][0] <= fam["n_opt"]["value"] <= fam["n_opt"]["interval"][1]
    assert f"{fam['chosen']} (chosen)" in text and "Which law to trust" in text


def test_compute_used_counts_a_wsd_branch_from_its_fork_only():
    from medscale.analysis.report import compute_used

    runs = pd.DataFrame({"compute": [6e11, 3e11, 2e11], "flops_full": [1e12, 5e11, 4e11], "steps": [100, 50, 40],
                         "forked_at_step": [np.nan, 40, np.nan]})  # a trunk, its branch, an unrelated run
    c = compute_used(runs)
    assert c["used_flops"] == 1e12 + 5e11 * (1 - 40 / 50) + 4e11
    assert c["cosine_flops"] == 1.9e12 and c["branches"] == 1 and c["convention"] == "full"
    assert c["ratio"] == c["cosine_flops"] / c["used_flops"]
    plain = compute_used(runs.drop(columns=["flops_full", "forked_at_step"]))
    assert plain["used_flops"] == plain["cosine_flops"] == 1.1e12 and plain["convention"] == "6ND"


def test_report_states_the_compute_and_its_cosine_cost(tmp_path, fast_figures):
    iso = synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=7, noise=0.005)
    iso["steps"] = 1000
    iso["forked_at_step"] = np.where(iso["budget"] < 1e20, 800, np.nan)
    index = write_report(tmp_path / "rep", results=iso, budget=1e21, n_boot=0)
    fits = json.loads((index.parent / "fits.json").read_text())
    assert fits["compute"]["branches"] == int((iso["budget"] < 1e20).sum())
    assert fits["compute"]["cosine_flops"] > fits["compute"]["used_flops"]
    assert "same grid under cosine" in index.read_text()
