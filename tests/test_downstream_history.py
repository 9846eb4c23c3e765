"""No event after the prediction time reaches a model's input (property tests over random tasks,
subjects and times), and the vectorised histories equal the tokenizer's own `encode_events(until=t)`."""
import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from medscale.data.history import PREFIX_TOKENS, build_histories, count_features, subject_events
from medscale.data.tasks import extract_labels
from medscale.data.tokenizer import Tokenizer

TASKS = ["in_hospital_mortality", "readmission_30d", "dx_heart_failure_1y", "med_start_30d", "next_year_cost"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world(tiny_dataset):
    meds, tokens = tiny_dataset
    tok = Tokenizer.load(tokens)
    labels = {t: extract_labels(meds, t) for t in TASKS}
    events = subject_events(meds, np.concatenate([l["subject_id"].to_numpy() for l in labels.values()]))
    return meds, tok, labels, events


def _reference(tok, subject_events_pd, t, max_len):
    seq = tok.encode_events(subject_events_pd, until=t)
    if seq.size > max_len:
        tail = seq[seq.size - (max_len - PREFIX_TOKENS):]
        lead = int(np.argmax((tail < tok.value_base) | (tail >= tok.code_base)))
        seq = np.concatenate([seq[:PREFIX_TOKENS], tail[lead:]])
    return seq


def _future_mutated(events: pl.DataFrame, subject: int, t, rng) -> pl.DataFrame:
    """The subject's events with everything after t replaced: dropped, shuffled codes, new events."""
    t = pd.Timestamp(t).to_datetime64().astype("datetime64[us]")
    mine = events.filter(pl.col("subject_id") == subject)
    past = mine.filter(pl.col("time").is_null() | (pl.col("time") <= t))
    future = mine.filter(pl.col("time") > t)
    codes = mine["code"].to_numpy()
    n_new = int(rng.integers(1, 30))
    invented = pl.DataFrame({
        "_ord": np.arange(n_new, dtype=np.uint32) + 10**9,
        "subject_id": np.full(n_new, subject, np.int64),
        "time": (t + rng.integers(1, 10**13, n_new).astype("timedelta64[us]")),
        "code": rng.choice(codes, n_new),
        "numeric_value": rng.normal(size=n_new),
    }).cast(mine.schema)
    kept_future = future.sample(fraction=float(rng.random()), seed=int(rng.integers(1 << 30))) if future.height else future
    return pl.concat([past, kept_future, invented]).sort(["time", "_ord"], nulls_last=False)


@SETTINGS
@given(task=st.sampled_from(TASKS), pick=st.integers(0, 10**9), max_len=st.sampled_from([8, 24, 64, 512]),
       shift_s=st.one_of(st.just(0), st.integers(-400 * 86400, 400 * 86400)), seed=st.integers(0, 2**31 - 1))
def test_changing_the_future_never_changes_the_input(world, task, pick, max_len, shift_s, seed):
    meds, tok, labels, events = world
    rows = labels[task]
    row = rows.iloc[pick % len(rows)]
    t = row["prediction_time"] + pd.Timedelta(seconds=shift_s)  # task times, and arbitrary times around them
    sample = pd.DataFrame({"subject_id": [row["subject_id"]], "prediction_time": [t]})
    original = build_histories(meds, sample, tok, max_len, events=events)
    mutated = _future_mutated(events, int(row["subject_id"]), t, np.random.default_rng(seed))
    changed = build_histories(meds, sample, tok, max_len, events=mutated)
    a = original.tokens_NxL[0, : original.lengths_N[0]]
    b = changed.tokens_NxL[0, : changed.lengths_N[0]]
    np.testing.assert_array_equal(a, b)
    assert PREFIX_TOKENS <= a.size <= max_len
    # and it is exactly what the tokenizer makes of the events up to t
    mine = events.filter(pl.col("subject_id") == int(row["subject_id"])).to_pandas()
    np.testing.assert_array_equal(a, _reference(tok, mine[["subject_id", "time", "code", "numeric_value"]], t, max_len))
    # every code token in the input is the code of an event at or before t
    past = mine[mine["time"].isna() | (mine["time"] <= t)]
    seen = {tok.token_id.get(c, 1) for c in past["code"]}
    code_tokens = a[(a >= tok.code_base) | (a == 1)]
    assert set(code_tokens.tolist()) <= seen


def test_outcome_event_is_not_in_the_input_at_the_prediction_time(world):
    """The admission before an in-hospital death: MEDS_DEATH never appears; the admission itself does."""
    meds, tok, labels, events = world
    rows = labels["in_hospital_mortality"]
    died = rows[rows["boolean_value"]]
    assert len(died) > 0
    hist = build_histories(meds, died, tok, 512, events=events)
    death, admission = tok.token_id["MEDS_DEATH"], tok.token_id["ADMISSION//INPATIENT"]
    for i in range(len(died)):
        seq = hist.tokens_NxL[i, : hist.lengths_N[i]]
        assert death not in seq and seq[-1] != 3  # no death, no EOS
        assert admission in seq


def test_count_features_only_count_the_past(world):
    meds, tok, labels, events = world
    rows = labels["dx_heart_failure_1y"].iloc[:40]
    codes = list(tok.codes[:50])
    X = count_features(meds, rows, codes, events=events).X_NxF
    ev = events.to_pandas()
    for i, r in enumerate(rows.itertuples()):
        mine = ev[(ev.subject_id == r.subject_id) & ev.time.notna() & (ev.time <= r.prediction_time)]
        expect = mine["code"].value_counts()
        assert X[i, 5 + 3] == expect.get(codes[3], 0)
        assert X[i, 0] > 0  # age at t, from MEDS_BIRTH
        later = X[i, 3]
        assert later == ((mine["code"] != "MEDS_BIRTH") & ~mine["code"].str.startswith(("GENDER//", "SEX//"))).sum()
