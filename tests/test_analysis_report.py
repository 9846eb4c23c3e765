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
