"""Rebuild porian2024_*.csv from the authors' repository (see porian2024.md).

Reads the four summary pickles of formll/resolving-scaling-law-discrepancies at commit
0dc60d91b8a525858a3067fc9e4a46ff5374cc6f from a git mirror (default: the path `fetch` gave,
/work/.mirror/formll+resolving-scaling-law-discrepancies/repo; override with $PORIAN_REPO).
Needs pandas (any 2.x/3.x reads the authors' pandas-1.5 pickles) and numpy; not medscale's venv.

    python tests/data/make_porian2024.py

Writes porian2024_isoflop.csv, porian2024_optima.csv, porian2024_fits.csv next to this file.
"""

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

REPO = os.environ.get("PORIAN_REPO", "/work/.mirror/formll+resolving-scaling-law-discrepancies/repo")
COMMIT = "0dc60d91b8a525858a3067fc9e4a46ff5374cc6f"
FILES = ["summary_df", "summary_df_owt2", "summary_df_kaplan_tuned_hparams", "summary_df_att"]
OUT = Path(__file__).resolve().parent

VOCAB, SEQ = 50432, 2048  # data.py: precise_param_count_open_lm, seq_len of every run

# configs.CONFIG_DICT_LABEL (same labels for owt2); '' is printed 'Kaplan Adjusted' by
# paper_tables.extract_label. The attention rows are not in the paper's results table.
LABELS = {
    ("base", "long", "kaplan", "kaplan", "train"): "Reproducing Kaplan et al.",
    ("base", "long", "kaplan", "standard", "val"): "Counting last layer FLOPs",
    ("base", "short", "kaplan", "standard", "val"): "Correcting warmup",
    ("base", "short", "chinchilla", "standard", "val"): "Cosine decay",
    ("tuned", "short", "const", "standard", "val"): "Optimizer tuning (no decay)",
    ("tuned", "long", "const", "kaplan", "train"): "Kaplan Adjusted",
    ("base", "long", "kaplan", "attention", "train"): "Counting last layer and attention FLOPs",
    ("base", "short", "kaplan", "attention", "train"): "Correcting warmup (attention FLOPs)",
    ("base", "short", "chinchilla", "attention", "train"): "Cosine decay (attention FLOPs)",
    ("tuned", "short", "const", "attention", "train"): "Optimizer tuning (no decay) (attention FLOPs)",
}
# configs.ISOFLOP_ARGS: which N and loss each convention's fit used
N_KIND = {"kaplan": "non_embedding", "standard": "with_head", "attention": "with_head_plus_attention"}
LOSS_KIND = {"train": "train_smoothed", "val": "val"}
# paper_tables.archs_table: N_exact, listed in the order of increasing size
N_EXACT = [5175744, 7508224, 9816640, 15608768, 22506048, 28695680, 37092096, 57432000, 84852864,
           108540160, 149148032, 221014144, 347269120, 455546560, 612234304, 902090176]


def non_embedding(width, depth):  # data.precise_param_count_open_lm(vocab_size=0)
    d_ff = 256 * ((int(2 * 4 * width / 3) + 256 - 1) // 256)
    return (4 * width + 3 * d_ff) * width * depth


def architectures():
    """(width, depth) of the 16 models. Not stored in the summary pickles; found (porian2024.md) as the
    unique solution, over widths 32..4096 step 32 and depths 1..64, of the authors' own count
    params_active_precise(width, depth) == the N of the 'standard' setups. main() asserts that every N of
    every setup (three conventions) matches exactly one row."""
    return [(96, 3), (128, 4), (160, 5), (224, 6), (288, 8), (320, 9), (384, 10), (480, 12), (576, 14),
            (640, 15), (704, 18), (832, 21), (1024, 23), (1120, 26), (1312, 26), (1504, 30)]


def load(name):
    blob = subprocess.run(["git", "-C", REPO, "show", f"{COMMIT}:data/{name}.pickle.xz"],
                          check=True, capture_output=True).stdout
    return pd.read_pickle(io.BytesIO(blob), compression="xz")


def main():
    arch = architectures()
    rows_arch = []
    for (w, d), n_exact in zip(arch, N_EXACT):
        ne = non_embedding(w, d)
        rows_arch.append(dict(width=w, depth=d, n_non_embedding=ne, n_with_head=ne + VOCAB * w,
                              n_with_head_plus_attention=ne + VOCAB * w + SEQ * w * d, n_exact=n_exact))
    arch_df = pd.DataFrame(rows_arch)

    summary = pd.concat([load(f) for f in FILES], ignore_index=True)
    points, optima, fits = [], [], []
    for _, r in summary.iterrows():
        key = (r.hparams, r.warmup, r.decay, r.param_count, r.val)
        setup = "_".join((r.dataset,) + key)
        common = dict(setup=setup, label=LABELS[key], dataset={"rw": "RefinedWeb", "owt2": "OpenWebText2"}[r.dataset],
                      hparams=r.hparams, warmup=r.warmup, decay=r.decay, flop_convention=r.param_count,
                      n_kind=N_KIND[r.param_count], loss_kind=LOSS_KIND[r.val])
        col = "n_" + N_KIND[r.param_count]
        used = {c: (n is not None and np.isfinite(n)) for c, n in zip(r.optimal_pairs.flops, r.optimal_pairs.n)}
        for _, x in r.data.iterrows():
            if not isinstance(x.orig_n, pd.Series):
                continue
            for n, t, loss in zip(x.orig_n, x.orig_t, x.orig_loss):
                a = arch_df[arch_df[col] == int(round(n))]
                assert len(a) == 1, (setup, n)
                a = a.iloc[0]
                points.append(dict(common, budget_flops=x.flops, n=int(round(n)), tokens=t, loss=loss,
                                   budget_in_fit=bool(used.get(x.flops, False)), width=a.width, depth=a.depth,
                                   n_non_embedding=a.n_non_embedding, n_with_head=a.n_with_head,
                                   n_with_head_plus_attention=a.n_with_head_plus_attention))
        for _, o in r.optimal_pairs.iterrows():
            ok = o.n is not None and np.isfinite(o.n)
            optima.append(dict(common, budget_flops=o.flops, in_fit=ok,
                               n_opt=o.n if ok else np.nan, log_n_opt_std=o.n_star_std if ok else np.nan,
                               tokens_opt=o.t if ok else np.nan, loss_opt=o.loss if ok else np.nan))
        fr = r.fit_results
        boot = [b for b in fr["bootstrap_weighted"] if "n_coef" in b]
        a_b = [b["n_exponent"] for b in boot]
        b_b = [b["t_exponent"] for b in boot]
        main_fit = fr["bs_median_weighted"]
        fits.append(dict(common, a=main_fit["n_exponent"],
                         a_lo=np.quantile(a_b, 0.025), a_hi=np.quantile(a_b, 0.975), a_r2=main_fit["n_r2"],
                         n_coef=main_fit["n_coef"],
                         b=main_fit["t_exponent"], b_lo=np.quantile(b_b, 0.025), b_hi=np.quantile(b_b, 0.975),
                         t_coef=main_fit["t_coef"], n_bootstrap=len(boot),
                         a_unweighted=fr["basic"]["n_exponent"],
                         n_budgets_in_fit=int(r.optimal_pairs.n.notna().sum())))

    pd.DataFrame(points).to_csv(OUT / "porian2024_isoflop.csv", index=False, float_format="%.10g")
    pd.DataFrame(optima).to_csv(OUT / "porian2024_optima.csv", index=False, float_format="%.10g")
    pd.DataFrame(fits).to_csv(OUT / "porian2024_fits.csv", index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
