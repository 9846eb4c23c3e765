"""benchmarks/bench_coverage.py, the calibration study of the fits' intervals: its quick mode runs every product
method on every study kind and scenario and fills the table, so the benchmark cannot rot between full runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_coverage  # noqa: E402

# quantities each product method reports, per scenario (alpha, beta, R*_D have a truth only under the law)
ALWAYS = {"A2": {"a", "N_opt@in", "N_opt@10x"}, "A2-parabola": {"a", "N_opt@in", "N_opt@10x"},
          "A3": {"a", "N_opt@in", "N_opt@10x"}, "DC": {"a", "N_opt@in", "N_opt@10x", "N_opt(U)@10x"}}
LAW_ONLY = {"A3": {"alpha", "beta"}, "DC": {"alpha", "beta", "R_star_D"}}
KIND = {"A2": "isoflop", "A2-parabola": "isoflop", "A3": "isoflop", "DC": "data-constrained"}


def _rows(md: str) -> pd.DataFrame:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:] if not line.startswith("|---")]
    return pd.DataFrame(cells, columns=head)


def test_the_quick_study_fills_every_row(tmp_path):
    out, csv = tmp_path / "coverage.md", tmp_path / "rows.csv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_coverage.py"), "--quick", "--out", str(out),
                           "--csv", str(csv)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Coverage of nominal 95% intervals")
    table = _rows(text)
    assert list(table.columns[:7]) == ["study", "scenario", "method", "quantity", "n", "nominal", "coverage"]
    for study in bench_coverage.STUDIES:
        for scenario in bench_coverage.SCENARIOS:
            for method, quantities in ALWAYS.items():
                if not study.startswith(KIND[method]):
                    continue
                want = quantities | (LAW_ONLY.get(method, set()) if scenario == "law" else set())
                got = set(table[(table.study == study) & (table.scenario == scenario) & (table.method == method)]
                          ["quantity"])
                assert want <= got, (study, scenario, method, want - got)
    coverage = table["coverage"].str.split("%").str[0].astype(float) / 100
    assert ((coverage >= 0) & (coverage <= 1)).all()
    assert (table["nominal"] == "95%").all()
    assert (table["n"].astype(int) == 1).all()
    rows = pd.read_csv(csv)
    assert rows["truth"].gt(0).all() and rows["error"].isna().mean() > 0.9  # the fits ran


def test_scoring_counts_misses_on_each_side():
    rows = pd.DataFrame({"study": "s", "scenario": "law", "method": "A3", "quantity": "a", "index": range(4),
                         "truth": 0.5, "value": 0.5, "low": [0.4, 0.6, 0.1, float("nan")],
                         "high": [0.6, 0.7, 0.3, float("nan")], "seconds": 1.0})
    r = bench_coverage.score(rows).iloc[0]
    assert (r["coverage"], r["below"], r["above"], r["failed"]) == (0.25, 1, 1, 1)
