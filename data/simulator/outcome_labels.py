"""Realized outcomes for ground-truth rows, read back from the MEDS events (the definitions in
data/ground_truth.py applied to the data). Used to check that the exported probabilities are
calibrated, and by task builders that want labels at exactly the ground-truth prediction times.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import polars as pl

from medscale.data.simulator.ground_truth import outcome_spec
from medscale.data.meds import read_meds

_KEYS = ["subject_id", "time"]


def _events(meds_root, codes: list[str] | None = None) -> pl.DataFrame:
    ds = read_meds(meds_root)
    frame = pl.scan_parquet([str(s.path) for s in ds.shards]).select(["subject_id", "time", "code", "numeric_value"])
    if codes is not None:
        frame = frame.filter(pl.col("code").is_in(codes))
    return (frame.filter(pl.col("time").is_not_null())
            .with_columns(pl.col("time").cast(pl.Datetime("us")), pl.col("subject_id").cast(pl.Int64))
            .collect().sort(_KEYS))


def _first_after(rows: pl.DataFrame, events: pl.DataFrame, *, strict: bool, by: list[str]) -> pl.DataFrame:
    """For each row, the first event at time > prediction_time (or >= when not strict) of the same `by` keys."""
    shift = timedelta(microseconds=1) if strict else timedelta(0)
    left = rows.with_columns((pl.col("prediction_time") + shift).alias("_from")).sort("_from")
    right = events.rename({"time": "_event_time"}).with_columns(pl.col("_event_time").alias("_from")).sort("_from")
    return left.join_asof(right, on="_from", by=by, strategy="forward", check_sortedness=False).sort("_row")


def realize(meds_root, truth: pd.DataFrame) -> np.ndarray:
    """Realized label (0/1, or the realized cost) for each row of `truth` (one outcome or several)."""
    out = np.full(len(truth), np.nan)
    rows = pl.from_pandas(truth.reset_index(drop=True)).with_row_index("_row").with_columns(
        pl.col("prediction_time").cast(pl.Datetime("us")), pl.col("subject_id").cast(pl.Int64))
    for name in rows["outcome"].unique().to_list():
        sub = rows.filter(pl.col("outcome") == name)
        spec = outcome_spec(name)
        horizon = timedelta(days=spec.horizon_days)
        idx = sub["_row"].to_numpy()
        if name in ("in_hospital_death", "long_stay_7d"):
            ends = _events(meds_root, ["DISCHARGE//HOME", "DISCHARGE//SNF", "MEDS_DEATH"])
            hit = _first_after(sub, ends, strict=True, by=["subject_id"])
            if name == "in_hospital_death":
                value = (hit["code"] == "MEDS_DEATH").fill_null(False)
            else:
                value = ((hit["_event_time"] - hit["prediction_time"]) > timedelta(days=7)).fill_null(False)
        elif name == "next_year_cost":
            claims = _events(meds_root, ["COST//CLAIMS"]).with_columns(
                pl.col("numeric_value").cast(pl.Float64).cum_sum().over("subject_id").alias("_cum"))
            before = lambda col: sub.with_columns(pl.col(col).alias("_at")).sort("_at").join_asof(  # noqa: E731
                claims.select("subject_id", pl.col("time").alias("_at"), "_cum").sort("_at"),
                on="_at", by="subject_id", strategy="backward", allow_exact_matches=False,
                check_sortedness=False).sort("_row")["_cum"]
            sub = sub.with_columns((pl.col("prediction_time") + horizon).alias("_end"))
            value = before("_end").fill_null(0.0) - before("prediction_time").fill_null(0.0)
        else:
            if name == "med_start_30d":
                events = _events(meds_root, sub["target_code"].unique().to_list()).rename({"code": "target_code"})
                hit = _first_after(sub, events, strict=True, by=["subject_id", "target_code"])
            else:
                hit = _first_after(sub, _events(meds_root, list(spec.codes)), strict=spec.window.startswith("("),
                                   by=["subject_id"])
            delta = hit["_event_time"] - hit["prediction_time"]
            within = delta <= horizon if spec.window.endswith("]") else delta < horizon
            value = within.fill_null(False)
        out[idx] = value.cast(pl.Float64).to_numpy()
    return out
