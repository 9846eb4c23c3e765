"""What a model may see at a prediction time: a subject's events up to it, as tokens or as counts.

The cut is INCLUSIVE: the input at prediction time t holds every event with time <= t (and the subject's
static rows), and nothing later, not even the time-gap token that would announce the next event.
Events at exactly t belong to the input (the admission's reason code is known at the admission); task
files guarantee the outcome itself is strictly after t (data/tasks.py refuses label windows that contain
t), so the outcome never reaches the input.

`build_histories` gives the tokens `Tokenizer.encode_events(events, until=t)` gives, without EOS, cut to
the model's `max_len`: the demographic prefix (BOS, SEX, AGE) is kept and the rest is the last
`max_len - 3` tokens, starting on an event boundary (a value token whose code was cut is dropped too).
It is vectorised: one `encode_table` call over every sample, each sample a pseudo-subject holding its
subject's rows up to t (only the last `max_len + 4` timed events and the first one, which sets AGE, are
needed for the last max_len tokens, since every event yields 1 to 3 tokens).

`count_features` gives the baseline's features at the same cut: age at t, sex, number of events, and
per-code event counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from medscale.data.meds import read_meds
from medscale.data.tokenizer import BIRTH_CODE, PAD, SEX_PREFIXES, Tokenizer

PREFIX_TOKENS = 3  # BOS, SEX//x, AGE//a-b (the default tokenizer's prefix; Tokenizer.prefix_len in general)
_EXTRA_EVENTS = 4
_US_PER_YEAR = 365.25 * 86_400 * 1_000_000


@dataclass
class Histories:
    tokens_NxL: np.ndarray    # int32, right-padded with PAD
    lengths_N: np.ndarray     # int64, real tokens per row (>= 3)

    def __len__(self) -> int:
        return int(self.lengths_N.size)


def _samples_frame(samples: pd.DataFrame) -> pl.DataFrame:
    return pl.DataFrame({
        "_sample": np.arange(len(samples), dtype=np.int64),
        "subject_id": samples["subject_id"].to_numpy(dtype=np.int64),
        "prediction_time": samples["prediction_time"].to_numpy().astype("datetime64[us]"),
    })


def subject_events(meds_root, subject_ids) -> pl.DataFrame:
    """Every row of these subjects: subject_id, time, code, numeric_value, _ord (file order, for ties)."""
    ids = np.unique(np.asarray(subject_ids, dtype=np.int64))
    shards = [str(s.path) for s in read_meds(meds_root).shards]
    frame = (pl.scan_parquet(shards)
             .select(pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")),
                     pl.col("code").cast(pl.Utf8), pl.col("numeric_value").cast(pl.Float64))
             .filter(pl.col("subject_id").is_in(ids.tolist()))
             .collect())
    return frame.with_row_index("_ord")


def _visible(samples: pd.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Each sample's rows with time <= its prediction time (static rows always)."""
    return (_samples_frame(samples).join(events, on="subject_id", how="inner")
            .filter(pl.col("time").is_null() | (pl.col("time") <= pl.col("prediction_time"))))


def build_histories(meds_root, samples: pd.DataFrame, tokenizer: Tokenizer, max_len: int,
                    events: pl.DataFrame | None = None) -> Histories:
    """Tokens each (subject_id, prediction_time) row of `samples` may see; see the module doc."""
    prefix = tokenizer.prefix_len
    if max_len <= prefix:
        raise ValueError(f"max_len must exceed the {prefix}-token demographic prefix, got {max_len}")
    n = len(samples)
    if n == 0:
        return Histories(np.zeros((0, max_len), np.int32), np.zeros(0, np.int64))
    events = subject_events(meds_root, samples["subject_id"]) if events is None else events
    rows = _visible(samples, events)
    timed = pl.col("time").is_not_null() & (pl.col("code") != BIRTH_CODE) & ~pl.col("code").str.starts_with(
        SEX_PREFIXES[0]) & ~pl.col("code").str.starts_with(SEX_PREFIXES[1])
    rows = rows.sort(["_sample", "time", "_ord"], nulls_last=False).with_row_index("_pos")
    rows = rows.with_columns(timed.alias("_timed")).with_columns(
        pl.when(pl.col("_timed")).then(pl.col("_pos")).otherwise(None).rank("ordinal", descending=True)
        .over("_sample").alias("_from_end"),
        pl.when(pl.col("_timed")).then(pl.col("time")).otherwise(None).min().over("_sample").alias("_first"))
    rows = rows.filter(~pl.col("_timed") | (pl.col("_from_end") <= max_len + _EXTRA_EVENTS)
                       | (pl.col("time") == pl.col("_first")))
    table = pa.table({
        "subject_id": rows["_sample"].to_arrow(),
        "time": rows["time"].to_arrow(),
        "code": rows["code"].to_arrow(),
        "numeric_value": rows["numeric_value"].to_arrow(),
    })
    tokens, subjects, lengths = tokenizer.encode_table(table)
    out = np.full((n, max_len), PAD, dtype=np.int32)
    out_len = np.zeros(n, dtype=np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    value_lo, value_hi = tokenizer.value_base, tokenizer.code_base
    empty = tokenizer.empty_history()
    seqs: dict[int, np.ndarray] = {int(s): tokens[o:o + ln - 1] for s, o, ln in zip(subjects, starts, lengths)}
    for i in range(n):
        seq = seqs.get(i, empty)  # without EOS
        if seq.size > max_len:
            tail = seq[seq.size - (max_len - prefix):]
            lead = int(np.argmax((tail < value_lo) | (tail >= value_hi))) if tail.size else 0
            seq = np.concatenate([seq[:prefix], tail[lead:]])
        out[i, :seq.size] = seq
        out_len[i] = seq.size
    return Histories(out, out_len)


@dataclass
class CountFeatures:
    X_NxF: np.ndarray          # float32
    names: list[str]


def count_features(meds_root, samples: pd.DataFrame, codes: list[str],
                   events: pl.DataFrame | None = None) -> CountFeatures:
    """age_years (at the prediction time; NaN without MEDS_BIRTH), sex_male, sex_female, n_events,
    years_observed, then one count per code in `codes`: all from events at or before the prediction time."""
    n = len(samples)
    events = subject_events(meds_root, samples["subject_id"]) if events is None else events
    rows = _visible(samples, events)
    X = np.zeros((n, 5 + len(codes)), dtype=np.float32)
    if rows.height:
        t_us = rows["time"].cast(pl.Int64)
        birth = rows.filter(pl.col("code") == BIRTH_CODE).group_by("_sample").agg(pl.col("time").min())
        sample_t = _samples_frame(samples)["prediction_time"].cast(pl.Int64).to_numpy()
        age = np.full(n, np.nan)
        if birth.height:
            idx = birth["_sample"].to_numpy()
            age[idx] = (sample_t[idx] - birth["time"].cast(pl.Int64).to_numpy()) / _US_PER_YEAR
        X[:, 0] = age
        code = rows["code"]
        s_idx = rows["_sample"].to_numpy()
        is_sex = (code.str.starts_with(SEX_PREFIXES[0]) | code.str.starts_with(SEX_PREFIXES[1])).to_numpy()
        upper = code.str.to_uppercase()
        male = is_sex & (upper.str.ends_with("//M") | upper.str.ends_with("//MALE")).to_numpy()
        female = is_sex & (upper.str.ends_with("//F") | upper.str.ends_with("//FEMALE")).to_numpy()
        X[:, 1] = np.bincount(s_idx, weights=male, minlength=n) > 0
        X[:, 2] = np.bincount(s_idx, weights=female, minlength=n) > 0
        timed = t_us.is_not_null().to_numpy() & (code != BIRTH_CODE).to_numpy() & ~is_sex
        X[:, 3] = np.bincount(s_idx[timed], minlength=n)
        first = np.full(n, np.nan)
        frame = pl.DataFrame({"s": s_idx[timed], "t": t_us.to_numpy()[timed]}).group_by("s").agg(pl.col("t").min())
        first[frame["s"].to_numpy()] = frame["t"].to_numpy()
        X[:, 4] = (sample_t - first) / _US_PER_YEAR
        col_of = {c: j for j, c in enumerate(codes)}
        cols = code.replace_strict(col_of, default=-1, return_dtype=pl.Int64).to_numpy()
        keep = timed & (cols >= 0)
        np.add.at(X, (s_idx[keep], 5 + cols[keep]), 1.0)
    return CountFeatures(X, ["age_years", "sex_male", "sex_female", "n_events", "years_observed"]
                         + [f"count:{c}" for c in codes])
