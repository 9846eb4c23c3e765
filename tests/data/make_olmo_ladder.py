"""Rebuild olmo_ladder.csv from the authors' repository (see olmo_ladder.md).

Reads the per-run evaluation logs src/scripts/paper/data/ladder-runs/*.csv of allenai/OLMo-ladder at
commit 67a3f440f787d020da35e3ca8eeae475fae754f5 from a git mirror (default: the path `fetch` gave,
/work/.mirror/allenai+OLMo-ladder/repo; override with $OLMO_LADDER_REPO). Needs pandas, numpy, scipy.

    python tests/data/make_olmo_ladder.py

One row per run (its final checkpoint). Token counts and the 5-point moving average follow the
authors' src/scaling/utils.py:get_step1_data_by_name (D = throughput/total_tokens of the last row,
else _step * batch_size_in_tokens; loss = mean of the last `moving_avg` rows; the paper commands
use --moving_avg 5). N is the authors' MODEL_PARAMS / configs/final.json `n`.

Self-check: refits the authors' step-1 law L = A/N^a + B/D^b + E (Huber on the 16 ladder runs of
configs/final.json, as src/scripts/step1.py does with -y c4) and prints the 7B/13B predictions next
to the authors' stored src/scripts/paper/figures/step1_c4_main.csv (13B-5T: actual 2.4379,
predicted 2.3444, relative error -3.83%). The Huber fit here reimplements the authors' objective
(Huber, delta 1e-3, on log residuals; one L-BFGS-B start from their p0) with a numerical instead of
their analytic gradient, so its numbers may differ slightly from the authors'.
"""

import io
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

REPO = os.environ.get("OLMO_LADDER_REPO", "/work/.mirror/allenai+OLMo-ladder/repo")
COMMIT = "67a3f440f787d020da35e3ca8eeae475fae754f5"
DIR = "src/scripts/paper/data/ladder-runs"
OUT = Path(__file__).resolve().parent / "olmo_ladder.csv"
MOVING_AVG = 5

# src/scaling/utils.py MODEL_PARAMS (file-name size -> authors' size label)
MODEL_PARAMS = {
    "190M": 190354176, "370M": 371262464, "760M": 758220288, "1.3B": 1279395840,
    "3.2B": 3169537280, "7B": 6887575552, "13B": 13202396160,
}
FILE_SIZE = {"190M": "190M", "370M": "370M", "760M": "760M", "1B": "1.3B", "3B": "3.2B"}
FIT_SIZES = {"190M", "370M", "760M", "1.3B"}  # configs/final.json, mode "train"
FIT_LENGTHS = {"1xC", "2xC", "5xC", "10xC"}
TARGETS = {  # configs/final.json, mode "eval"
    "peteish7_eval_anneal.csv": ("7B", "7B-4T"),
    "peteish13_eval_final.csv": ("13B", "13B-5T"),
}
C4 = "eval/c4_en-validation/CrossEntropyLoss"
PILE = "eval/pile-validation/CrossEntropyLoss"
WIKI = "eval/wikitext_103-validation/CrossEntropyLoss"


def read(name):
    raw = subprocess.check_output(["git", "-C", REPO, "show", f"{COMMIT}:{DIR}/{name}"])
    return pd.read_csv(io.BytesIO(raw))


def tokens(row):
    if "throughput/total_tokens" in row and pd.notna(row["throughput/total_tokens"]):
        return int(float(row["throughput/total_tokens"]))
    return int(float(row["_step"])) * int(float(row["batch_size_in_tokens"]))


def one_row(df, **meta):
    last = df.iloc[-1]
    tail = df.iloc[-MOVING_AVG:]
    return {
        **meta,
        "D": tokens(last),
        "loss_c4": float(tail[C4].mean()),
        "loss_c4_last": float(last[C4]),
        "loss_pile_last": float(last[PILE]),
        "loss_wikitext103_last": float(last[WIKI]),
        "n_evals": len(df),
        "final_step": int(last["_step"]) if "_step" in df.columns else None,
        "batch_size_in_tokens": int(last["batch_size_in_tokens"]),
        "learning_rate_peak": float(last["learning_rate_peak"]),
    }


def load():
    names = subprocess.check_output(
        ["git", "-C", REPO, "ls-tree", "--name-only", COMMIT, f"{DIR}/"]
    ).decode().split()
    names = [n.split("/")[-1] for n in names]
    rows = []
    for name in sorted(names):
        m = re.fullmatch(r"(190M|370M|760M|1B|3B)-([0-9.]+xC)(-rerun)?\.csv", name)
        if m:
            size = FILE_SIZE[m.group(1)]
            length, rerun = m.group(2), bool(m.group(3))
            role = "fit" if size in FIT_SIZES and length in FIT_LENGTHS and not rerun else "extra"
            rows.append(one_row(read(name), source_file=name, size=size, run=f"{size}-{length}"
                                + ("-rerun" if rerun else ""), xC=float(length[:-2]), rerun=rerun,
                                role=role, N=MODEL_PARAMS[size]))
        elif name in TARGETS:
            size, label = TARGETS[name]
            rows.append(one_row(read(name), source_file=name, size=size, run=label, xC=np.nan,
                                rerun=False, role="target", N=MODEL_PARAMS[size]))
    df = pd.DataFrame(rows)
    df["C_6ND"] = 6.0 * df.N * df.D
    df["D_over_N"] = df.D / df.N
    df["costly"] = df.role == "target"
    cols = ["run", "size", "N", "D", "xC", "D_over_N", "C_6ND", "loss_c4", "loss_c4_last",
            "loss_pile_last", "loss_wikitext103_last", "role", "costly", "rerun", "n_evals",
            "final_step", "batch_size_in_tokens", "learning_rate_peak", "source_file"]
    return df[cols].sort_values(["N", "D", "rerun"]).reset_index(drop=True)


def check(df):
    from scipy.optimize import minimize

    fit = df[df.role == "fit"]
    assert len(fit) == 16
    lnN, lnD, y = np.log(fit.N.to_numpy(float)), np.log(fit.D.to_numpy(float)), fit.loss_c4.to_numpy()

    def f(p, lnN, lnD):  # chinchilla_n_d_fit: exp(a - alpha lnN) + exp(b - beta lnD) + E
        a, b, al, be, E = p
        return np.exp(a - al * lnN) + np.exp(b - be * lnD) + E

    def obj(p, delta=1e-3):  # fitting_functions.get_coefficients_huber: Huber on log residuals
        r = np.log(f(p, lnN, lnD)) - np.log(y)
        ar = np.abs(r)
        return np.sum(np.where(ar < delta, 0.5 * r**2, delta * (ar - 0.5 * delta)))

    # step1.py:fit_step1 for y_metric "c4": one start p0, all parameters bounded below by 0
    best = minimize(obj, [3.0, 6.0, 0.1, 0.2, 1.0], method="L-BFGS-B", bounds=[(0, None)] * 5,
                    tol=0.0, options={"maxiter": 1000000})
    a, b, al, be, E = best.x
    print(f"refit: L = {np.exp(a):.4g}/N^{al:.3f} + {np.exp(b):.4g}/D^{be:.3f} + {E:.3f}")
    for _, r in df[df.costly].iterrows():
        pred = f(best.x, np.log(r.N), np.log(r.D))
        print(f"{r.run:7s} C4 loss {r.loss_c4:.4f} pred {pred:.4f} rel.err {(pred - r.loss_c4) / r.loss_c4:+.2%}")


if __name__ == "__main__":
    df = load()
    df.to_csv(OUT, index=False, float_format="%.10g")
    print(f"wrote {OUT} ({len(df)} rows)")
    check(df)
