"""Zero-shot rollouts as generated trajectories in the MEDS data schema, and predictions read back from them.

    <out>/<split>/<k>.parquet    trajectory k (k = 0 .. K-1) of every sample (subject_id, prediction_time)

Each file is MEDS data (subject_id, time, code, numeric_value) plus the sample's `prediction_time`: MEDS'
generated-trajectory schema (GeneratedTrajectorySchema: the data schema + prediction_time, which
meds-trajectory-evaluation reads), one trajectory index per sample and file, rows in generation order.

Tokens -> rows (`decode_trajectory`): the clock starts at the prediction time and advances by each time-gap
token (zero_shot.gap_seconds: the middle of its bin, the lower edge of the open last bin); each code token is
one row at the current time; a value token right after a code gives its numeric_value, the middle of its
quantile bin (the finite edge of an open end bin); a fused code+value token is both; UNK is the row
`[UNK]`; EOS (the record ends) stops the trajectory.

Rows -> predictions (`trajectory_predictions`): the task's label window (data/tasks.LabelRule) read off the
rows: a label code at time <= prediction_time + horizon, or at or before the first end-event row; the
probability is the share of the K trajectories with the outcome (1 minus it for negated tasks), as
zero_shot.outcome_probabilities computes it from the tokens.
"""

# no `from __future__ import annotations` here: flexible_schema reads GeneratedTrajectorySchema's annotations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from flexible_schema import Required
from meds import DataSchema

from medscale.data.tasks import LabelRule
from medscale.data.tokenizer import BOS, EOS, MASK, PAD, UNK, Tokenizer

KEY = ["subject_id", "prediction_time"]


class GeneratedTrajectorySchema(DataSchema):
    """MEDS data rows of a generated future, with the prediction time of the sample they continue."""
    prediction_time: Required(pa.timestamp("us"), nullable=False)


TRAJECTORY_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                               ("numeric_value", pa.float32()), ("prediction_time", pa.timestamp("us"))])


def _bin_middle(tokenizer: Tokenizer, code: str, q: int) -> float | None:
    """The middle of value bin q of `code`; None for a code without that bin (a model may sample one)."""
    if not 1 <= q <= len(tokenizer.value_edges.get(code, [])) + 1 or code not in tokenizer.value_edges:
        return None
    lo, hi = tokenizer.value_range(code, q)
    if np.isfinite(lo) and np.isfinite(hi):
        return (lo + hi) / 2
    finite = [v for v in (lo, hi) if np.isfinite(v)]
    return finite[0] if finite else None


def decode_trajectory(tokens_T: np.ndarray, tokenizer: Tokenizer) -> list[tuple[float, str, float | None]]:
    """(seconds after the prediction time, code, numeric_value or None) of each event row, up to EOS."""
    from medscale.scaling.downstream.zero_shot import gap_seconds

    tokens = np.asarray(tokens_T)
    ends = np.flatnonzero(tokens == EOS)
    tokens = tokens[: ends[0]] if ends.size else tokens
    clock = np.cumsum(gap_seconds(tokenizer)[tokens])
    rows: list[tuple[float, str, float | None]] = []
    for i, tok in enumerate(tokens.tolist()):
        if tok >= tokenizer.fused_base:
            code, q = tokenizer.vocab[tok].rsplit("//Q", 1)
            rows.append((float(clock[i]), code, _bin_middle(tokenizer, code, int(q))))
        elif tok >= tokenizer.code_base or tok == UNK:
            rows.append((float(clock[i]), tokenizer.vocab[tok], None))
        elif tokenizer.value_base <= tok < tokenizer.code_base and rows and rows[-1][2] is None \
                and tokens[i - 1] >= tokenizer.code_base:
            q = int(tokenizer.vocab[tok].removeprefix("VALUE//Q"))
            rows[-1] = (rows[-1][0], rows[-1][1], _bin_middle(tokenizer, rows[-1][1], q))
    return rows


def trajectory_tables(trajectories_NxKxT: np.ndarray, samples: pd.DataFrame, tokenizer: Tokenizer) -> list[pa.Table]:
    """One table per trajectory index k: trajectory k of every sample (row i of `samples`) as MEDS rows."""
    traj = np.asarray(trajectories_NxKxT)
    ids = samples["subject_id"].to_numpy(np.int64)
    times = samples["prediction_time"].to_numpy().astype("datetime64[us]")
    tables = []
    for k in range(traj.shape[1]):
        cols: dict[str, list] = {name: [] for name in TRAJECTORY_SCHEMA.names}
        for i in range(traj.shape[0]):
            for seconds, code, value in decode_trajectory(traj[i, k], tokenizer):
                cols["subject_id"].append(ids[i])
                cols["time"].append(times[i] + np.timedelta64(int(round(seconds * 1e6)), "us"))
                cols["code"].append(code)
                cols["numeric_value"].append(value)
                cols["prediction_time"].append(times[i])
        tables.append(pa.table(cols, schema=TRAJECTORY_SCHEMA))
    return tables


def write_trajectories(out_dir, split: str, tables: list[pa.Table]) -> list[Path]:
    """<out_dir>/<split>/<k>.parquet for each trajectory index k, validated against GeneratedTrajectorySchema."""
    import pyarrow.parquet as pq

    from medscale.atomic import write_with

    folder = Path(out_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, table in enumerate(tables):
        GeneratedTrajectorySchema.validate(table)
        path = folder / f"{k}.parquet"
        write_with(path, lambda p, t=table: pq.write_table(t, p))
        paths.append(path)
    return paths


def read_trajectories(out_dir, split: str) -> dict[int, pa.Table]:
    """trajectory index -> its table, for every <out_dir>/<split>/<k>.parquet."""
    import pyarrow.parquet as pq

    files = sorted(Path(out_dir, split).glob("*.parquet"), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"{Path(out_dir, split)}: no trajectory files <k>.parquet")
    return {int(p.stem): pq.read_table(p) for p in files}


def _hits(table: pa.Table, rule: LabelRule) -> pd.DataFrame:
    """(subject_id, prediction_time, hit) for every sample with rows in one trajectory table."""
    import polars as pl

    frame = pl.from_arrow(table).with_row_index("_row")
    codes = frame["code"].unique().to_list()
    is_label = pl.col("code").is_in([c for c in codes if rule.label(c)])
    if rule.horizon_s is not None:
        inside = pl.col("time") <= pl.col("prediction_time") + pl.duration(microseconds=int(rule.horizon_s * 1e6))
    else:
        is_end = pl.col("code").is_in([c for c in codes if rule.end(c)]).cast(pl.Int64)
        frame = frame.sort("_row").with_columns(is_end.cum_sum().over(KEY).alias("_ends"), is_end.alias("_end"))
        inside = (pl.col("_ends") - pl.col("_end") == 0) if rule.end_inclusive else (pl.col("_ends") == 0)
    hits = frame.group_by(KEY).agg((is_label & inside).any().alias("hit"))
    return hits.to_pandas()


def trajectory_predictions(trajectories: dict[int, pa.Table], samples: pd.DataFrame, rule: LabelRule) -> np.ndarray:
    """The outcome probability of each row of `samples` (subject_id, prediction_time): the share of its
    trajectories whose rows put a label code inside the task's window (a sample without rows in a
    trajectory: no outcome there)."""
    if rule.value_sum:
        raise ValueError("trajectories give binary outcomes only (this task's label is a sum of values)")
    keys = samples[KEY].copy()
    keys["prediction_time"] = keys["prediction_time"].astype("datetime64[us]")
    hit = np.zeros((len(keys), len(trajectories)))
    for j, table in enumerate(trajectories.values()):
        got = keys.merge(_hits(table, rule), on=KEY, how="left")
        hit[:, j] = got["hit"].fillna(False).to_numpy(bool)
    p = hit.mean(axis=1)
    return 1.0 - p if rule.negate else p


def rollout(model, tokens_NxL: np.ndarray, lengths_N: np.ndarray, tokenizer: Tokenizer, *, k: int, max_new: int,
            seed: int, temperature: float = 1.0, batch_prompts: int = 16) -> np.ndarray:
    """int32 [N, K, T]: K sampled continuations of each history from a decoder (scaling/downstream/model
    LoadedModel), as the zero-shot mode samples them (models/rollout.sample_until)."""
    import jax

    from medscale.models.rollout import sample_until
    from medscale.scaling.downstream.zero_shot import _shorten

    key, out = jax.random.key(seed), []
    for i in range(0, len(lengths_N), batch_prompts):
        tok, ln = tokens_NxL[i:i + batch_prompts], lengths_N[i:i + batch_prompts]
        key, sub = jax.random.split(key)
        out.append(sample_until(model.graphdef, model.params, tok, ln, k=k, max_new=max_new, key=sub,
                                banned=(PAD, BOS, MASK), temperature=temperature, max_len=model.cfg.max_len,
                                chunk=max(1, min(32, max_new, model.cfg.max_len // 4)),
                                recontext=lambda t, n, keep: _shorten(t, n, keep, tokenizer)))
    return np.concatenate(out)
