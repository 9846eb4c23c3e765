"""Subgroup scaling: a gap that closes with size is called narrowing, one that opens widening, noise neither."""
import numpy as np
import pandas as pd

from medscale.analysis.subgroups import subgroup_scaling


def _table(gap_per_doubling, rng, noise=0.004):
    N = np.geomspace(1e4, 1.6e5, 5)
    rows = []
    for i, n in enumerate(N):
        for kind, groups in (("sex", ("F", "M")), ("age", ("<45", "45-64", "65+"))):
            for j, grp in enumerate(groups):
                v = 0.70 + 0.02 * i - j * (0.06 + gap_per_doubling * i) + rng.normal(0, noise)
                rows.append({"run_id": f"r{i}", "params": n, "compute": 1e15, "task": "t", "mode": "probe",
                             "kind": kind, "group": grp, "metric": "auroc", "value": v, "low": v - 0.01,
                             "high": v + 0.01, "n": 300})
    return pd.DataFrame(rows)


def test_gap_that_closes_narrows_and_one_that_opens_widens():
    rng = np.random.default_rng(0)
    narrow = subgroup_scaling(_table(-0.01, rng)).set_index("kind")
    assert narrow.loc["sex", "verdict"] == "narrows" and narrow.loc["age", "verdict"] == "narrows"
    assert narrow.loc["sex", "best"] == "F" and narrow.loc["age", "worst"] == "65+"
    wide = subgroup_scaling(_table(0.01, rng)).set_index("kind")
    assert (wide["verdict"] == "widens").all()
    flat = subgroup_scaling(_table(0.0, rng, noise=0.002))
    assert (flat["verdict"] == "no clear change").all()
