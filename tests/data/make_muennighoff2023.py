"""Rebuild muennighoff2023_runs.csv from the authors' notebook (see muennighoff2023.md).

Reads utils/parametric_fit.ipynb of huggingface/datablations at commit
13701315b163f1c54642b94ad237b2699187c3ee from a git mirror (default: the path `fetch` gave,
/work/.mirror/huggingface+datablations/repo; override with $DATABLATIONS_REPO). Standard library and
numpy only.

    python tests/data/make_muennighoff2023.py

The 182 runs are the lines the notebook printed (cell "Custom data loading with outliers removed", the
one that prints `name, p/1e9, t/1e9, ut/1e9, loss`) right before the fit that reports "Samples: 182"
and R*_D = 15.387756, R*_N = 5.309743. Each line is cross-checked against the NAMES_TO_VAL_LOSSES dict
in the cell above it, and the published law is re-evaluated on the runs: its R^2 must equal the
0.7722046084968408 the notebook prints (cell "### Default ###").
"""

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np

REPO = os.environ.get("DATABLATIONS_REPO", "/work/.mirror/huggingface+datablations/repo")
COMMIT = "13701315b163f1c54642b94ad237b2699187c3ee"
OUT = Path(__file__).resolve().parent / "muennighoff2023_runs.csv"

# printed by the notebook (cell 7 stage 1, cell 29 stage 2) and in the repository README
A_LOG, B_LOG, E_LOG, ALPHA, BETA = 6.255414, 7.3049974, 0.6254804, 0.3526596, 0.3526596
RD_STAR, RN_STAR = 15.387756, 5.309743
R2_PRINTED = 0.7722046084968408


def notebook():
    raw = subprocess.run(["git", "-C", REPO, "show", f"{COMMIT}:utils/parametric_fit.ipynb"],
                         check=True, capture_output=True).stdout
    return json.loads(raw)["cells"]


def published_law(n, d, u):
    """The README's scaling_law (also the notebook's '### Default ###' cell)."""
    A, B, E = np.exp(A_LOG), np.exp(B_LOG), np.exp(E_LOG)
    G = ((ALPHA * A) / (BETA * B)) ** (1 / (ALPHA + BETA))
    rd = np.maximum(d / u - 1, 0)
    un = np.minimum(n, (u * G) ** (BETA / ALPHA) * G)  # README's D_to_N(U): compute-optimal N when U is optimal D
    rn = np.maximum(n / un - 1, 0)
    return (E + A / (un + un * RN_STAR * (1 - np.exp(-rn / RN_STAR))) ** ALPHA
            + B / (u + u * RD_STAR * (1 - np.exp(-rd / RD_STAR))) ** BETA), un, rn, rd


def main():
    cells = notebook()
    idx = next(i for i, c in enumerate(cells)
               if "print(name, p/1e9, t/1e9, ut/1e9, loss)" in "".join(c["source"]))
    printed = "".join("".join(o.get("text", "")) for o in cells[idx]["outputs"])
    lines = [l.split() for l in printed.splitlines() if len(l.split()) == 5]
    assert len(lines) == 182, len(lines)

    dict_src = "".join(cells[idx - 1]["source"])
    live = {}
    for line in dict_src.splitlines():
        m = re.match(r'\s*"([^"]+)":\s*([0-9.E+\-]+)', line)  # commented-out entries start with '#'
        if m:
            live[m.group(1)] = float(m.group(2))

    rows = []
    for name, n, d, u, loss in lines:
        assert live[name] == float(loss), name
        rows.append(dict(run=name, n_params=round(float(n) * 1e9), tokens=round(float(d) * 1e9),
                         unique_tokens=round(float(u) * 1e9), loss=float(loss)))
    assert len({r["run"] for r in rows}) == 182

    N = np.array([r["n_params"] for r in rows], float)
    D = np.array([r["tokens"] for r in rows], float)
    U = np.array([r["unique_tokens"] for r in rows], float)
    L = np.array([r["loss"] for r in rows])
    pred, un, rn, rd = published_law(N, D, U)
    r2 = 1 - ((L - pred) ** 2).sum() / ((L - L.mean()) ** 2).sum()
    assert abs(r2 - R2_PRINTED) < 1e-6, r2
    for r, p, a, b, c in zip(rows, pred, un, rn, rd):
        r.update(epochs=r["tokens"] / r["unique_tokens"], r_d=c, u_n=a, r_n=b, loss_published_law=p)

    with open(OUT, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {OUT} ({len(rows)} runs), R^2 of the published law {r2:.10f}")


if __name__ == "__main__":
    main()
