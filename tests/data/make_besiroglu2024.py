"""Rebuild besiroglu2024_chinchilla.csv from Epoch AI's repository (see besiroglu2024_chinchilla.md).

Reads data/svg_extracted_data.csv of epoch-research/analyzing-chinchilla at commit
92258837425e1b5f2851d624287f0120583a3d0e from a git mirror (default: the path `fetch` gave,
/work/.mirror/epoch-research+analyzing-chinchilla/repo; override with $EPOCH_REPO). Standard library only.

    python tests/data/make_besiroglu2024.py

Tokens are derived as the authors' data_analysis.ipynb does: Training FLOP / (6 * Model Size).
in_fit reproduces the notebook's outlier rule (nr_of_models_excluded = 5): a point is fitted when its
loss is strictly below the 5th-largest loss, which leaves 240 of the 245 points.
"""

import csv
import io
import os
import subprocess
from pathlib import Path

REPO = os.environ.get("EPOCH_REPO", "/work/.mirror/epoch-research+analyzing-chinchilla/repo")
COMMIT = "92258837425e1b5f2851d624287f0120583a3d0e"
OUT = Path(__file__).resolve().parent / "besiroglu2024_chinchilla.csv"


def main():
    text = subprocess.run(["git", "-C", REPO, "show", f"{COMMIT}:data/svg_extracted_data.csv"],
                          check=True, capture_output=True, text=True).stdout
    src = [r for r in csv.DictReader(io.StringIO(text)) if r["loss"] and r["Model Size"] and r["Training FLOP"]]
    assert len(src) == 245, len(src)
    losses = sorted(float(r["loss"]) for r in src)
    cut = losses[-5]
    rows = []
    for r in src:
        n, c, loss = float(r["Model Size"]), float(r["Training FLOP"]), float(r["loss"])
        rows.append(dict(n_params=f"{n:.10g}", tokens=f"{c / (6.0 * n):.10g}", flops=f"{c:.10g}",
                         loss=f"{loss:.10g}", in_fit=loss < cut, svg_x=r["x"], svg_y=r["y"],
                         hex_color=r["hex_color"]))
    assert sum(r["in_fit"] for r in rows) == 240
    with open(OUT, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {OUT} ({len(rows)} points, {sum(r['in_fit'] for r in rows)} in the fit)")


if __name__ == "__main__":
    main()
