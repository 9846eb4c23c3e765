"""Rebuild farseer2025.csv from a verbatim copy of the Farseer authors' 1222_full.csv (see farseer2025.md).

The authors' repository (github.com/Farseer-Scaling-Law/Farseer, file ipynb/data/1222_full.csv) could
not be fetched here; xiangzezhen01/LLM-perf redistributes the file as dataset/farseer/1222_full.csv
(blob 46a1a34e2b8c41ffdb009f999e892180a57eb21d, 142,904 bytes, first committed in 6e30b677, read at
243573d6c873dec1e30542a83c65e8e0919dacc1). Default mirror: /work/.mirror/xiangzezhen01+LLM-perf/repo
(override with $FARSEER_REPO). Needs pandas.

    python tests/data/make_farseer2025.py

Conversion: drop 4 duplicate rows (the same run appended twice when the authors concatenated their data
batches: identical in every measured column, different only in the batch-level 'D/N' column), rename columns, recompute D/N (the source column 'D/N' is not D/N),
and add the split columns described in farseer2025.md. No value is changed.
"""

import io
import os
import subprocess
from pathlib import Path

import pandas as pd

REPO = os.environ.get("FARSEER_REPO", "/work/.mirror/xiangzezhen01+LLM-perf/repo")
COMMIT = "243573d6c873dec1e30542a83c65e8e0919dacc1"
PATH = "dataset/farseer/1222_full.csv"
BLOB = "46a1a34e2b8c41ffdb009f999e892180a57eb21d"
OUT = Path(__file__).resolve().parent / "farseer2025.csv"

# Window from the __main__ of the authors' Farseer fitting script (the module defining
# scaling_fit_fn_an_bn): filter_query "2e8<N<4e9", label 4e9. As published, that __main__ runs the
# code-data ablation with the 1222 loader commented out; see farseer2025.md.
FIT_LO, FIT_HI = 2e8, 4e9

RENAME = {
    "exact_N": "N",
    "N_add_emb": "N_with_embeddings",
    "M": "flops_per_token",
    "C": "C",
    "L": "bpc_en",
    "IntelliValSet_Raw|en|web-data": "bpc_en_web",
    "IntelliValSet_Raw|en|paper": "bpc_en_paper",
    "IntelliValSet_Raw|en|book": "bpc_en_book",
    "IntelliValSet_Raw|zh": "bpc_zh",
    "loss": "train_loss",
    "smooth loss": "train_loss_smooth",
    "final_iter": "final_iter",
    "bs": "batch_size_seqs",
    "seq_len": "seq_len",
    "lr": "lr",
    "h": "d_model",
    "ffnh": "d_ffn",
    "numh": "n_heads",
    "numl": "n_layers",
    "data_recipe": "data_recipe",
}


def main():
    blob = subprocess.check_output(["git", "-C", REPO, "rev-parse", f"{COMMIT}:{PATH}"]).decode().strip()
    assert blob == BLOB, blob
    raw = pd.read_csv(io.BytesIO(subprocess.check_output(["git", "-C", REPO, "show", f"{COMMIT}:{PATH}"])))
    assert len(raw) == 404
    assert (raw["N"] == raw["exact_N"]).all()
    raw["source_row"] = range(len(raw))
    # the duplicates agree in every measured column and differ only in the batch-level 'D/N' columns
    df = raw.drop_duplicates(subset=[c for c in raw.columns if c not in ("source_row", "D/N", "new_D/N")]).copy()
    assert len(df) == 400 and not df.duplicated(["exact_N", "D"]).any()
    df = df.drop(columns=["N"]).rename(columns=RENAME)  # 'N' == 'exact_N' (asserted above)
    df["D"] = df["D"].round().astype("int64")
    df["D_over_N"] = df["D"] / df["N"]
    df["C_6ND"] = 6.0 * df["N"] * df["D"]
    df["in_authors_fit_window"] = (df["N"] > FIT_LO) & (df["N"] < FIT_HI)
    df["costly"] = df["N"] > FIT_HI
    cols = ["source_row", "N", "N_with_embeddings", "D", "D_over_N", "C", "C_6ND", "flops_per_token",
            "bpc_en", "bpc_en_web", "bpc_en_paper", "bpc_en_book", "bpc_zh", "train_loss",
            "train_loss_smooth", "d_model", "d_ffn", "n_heads", "n_layers", "lr", "batch_size_seqs",
            "seq_len", "final_iter", "data_recipe", "in_authors_fit_window", "costly"]
    df = df[cols].sort_values(["N", "D"]).reset_index(drop=True)
    df.to_csv(OUT, index=False, float_format="%.10g")
    print(f"wrote {OUT} ({len(df)} rows)")


if __name__ == "__main__":
    main()
