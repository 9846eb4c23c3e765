"""Tokenizer: fitted on train only, value quantiles, time gaps, prefix, decode round trip, token store."""
import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medscale.data.meds import read_meds
from medscale.data.token_store import TokenWindows, tokenize_dataset
from medscale.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, TokenizerConfig

T0 = datetime(2010, 1, 1, 8, 0)
CFG = TokenizerConfig(min_count=2, n_value_bins=4)


def table(rows):
    return pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([r[3] for r in rows], pa.float64()),
    })


def subject(sid, sex, birth, events):
    rows = [(sid, None, f"GENDER//{sex}", None), (sid, birth, "MEDS_BIRTH", None)]
    return rows + [(sid, t, c, v) for t, c, v in events]


TRAIN_A = [float(v) for v in range(1, 21)]  # values of code A in train


def train_subjects():
    s1 = subject(1, "F", datetime(1960, 3, 1), [
        (T0, "A", TRAIN_A[0]), (T0, "B", None),
        (T0 + timedelta(minutes=30), "A", TRAIN_A[1]),
        (T0 + timedelta(days=2), "B", None),
        (T0 + timedelta(days=402), "RARE", None),
        (T0 + timedelta(days=402 + 3 * 365), "A", TRAIN_A[2]),
    ])
    s2 = subject(2, "M", datetime(1990, 1, 1), [(T0 + timedelta(hours=i), "A", v) for i, v in enumerate(TRAIN_A[3:12])]
                 + [(T0 + timedelta(days=5), "B", None)])
    s3 = subject(3, "F", datetime(2000, 1, 1), [(T0 + timedelta(hours=i), "A", v) for i, v in enumerate(TRAIN_A[12:])]
                 + [(T0 + timedelta(days=9), "B", None), (T0 + timedelta(days=10), "B", None)])
    return s1, s2, s3


@pytest.fixture(scope="module")
def meds(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokmeds")
    s1, s2, s3 = train_subjects()
    held = subject(9, "M", datetime(1950, 1, 1), [(T0 + timedelta(hours=i), "ONLY_HELD", None) for i in range(10)]
                   + [(T0 + timedelta(days=1, hours=i), "A", 1000.0) for i in range(50)])
    tune = subject(7, "F", datetime(1980, 1, 1), [(T0, "B", None), (T0 + timedelta(days=1), "A", 5.0)])
    for split, rows in (("train", s1 + s2), ("train", s3), ("held_out", held), ("tuning", tune)):
        sid = rows[0][0]
        path = root / "data" / split / f"{sid}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(rows), path)
    return root


@pytest.fixture(scope="module")
def tokens(meds, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokens"
    return tokenize_dataset(meds, out, CFG, workers=1)


def test_vocabulary_and_bins_come_from_train_only(tokens):
    tok = Tokenizer.load(tokens)
    assert "ONLY_HELD" not in tok.token_id and "RARE" not in tok.token_id
    assert {"A", "B"} <= set(tok.codes) and "MEDS_BIRTH" not in tok.codes and "GENDER//F" not in tok.codes
    assert tok.value_edges["A"] == pytest.approx(list(np.quantile(TRAIN_A, [0.25, 0.5, 0.75])))
    held = np.load(tokens / "held_out" / "tokens.npy")
    assert (held == UNK).sum() == 10                      # ONLY_HELD -> UNK
    assert (held == tok.token_id["VALUE//Q4"]).sum() == 50  # 1000.0 lands in A's top train bin


def test_decode_round_trip(meds, tokens):
    tok = Tokenizer.load(tokens)
    s1 = train_subjects()[0]
    stream = np.load(tokens / "train" / "tokens.npy")
    index = pq.read_table(tokens / "train" / "index.parquet").to_pandas()
    row = index[index.subject_id == 1].iloc[0]
    seq = stream[row.offset: row.offset + row.length]
    assert seq[0] == BOS and seq[-1] == EOS
    decoded = tok.decode(seq)
    assert [d.get("token") for d in decoded[:3]] == ["[BOS]", "SEX//F", "AGE//45-50"]
    events = [d for d in decoded if "code" in d]
    originals = [r for r in s1 if r[2] not in ("GENDER//F", "MEDS_BIRTH")]
    assert [e["code"] for e in events] == [r[2] if r[2] != "RARE" else "[UNK]" for r in originals]
    assert [e["gap"] for e in events] == [None, None, "5min-1h", "1d-7d", "365d-730d", "730d+"]
    for e, (_, _, _, value) in zip(events, originals):
        if value is None:
            assert "value_range" not in e
        else:
            lo, hi = e["value_range"]
            assert lo <= value < hi
    assert "A value in [" in tok.describe(seq)


def test_value_bins_match_a_per_code_searchsorted_on_random_data():
    rng = np.random.default_rng(0)
    codes = rng.choice(["X", "Y", "Z", "W"], 3000)
    values = np.round(rng.normal(0, 1, 3000) * np.where(codes == "Y", 100, 1), 1)
    values[rng.random(3000) < 0.1] = np.nan
    t = pa.table({"subject_id": pa.array(np.zeros(3000, np.int64)),
                  "time": pa.array(np.arange(3000) * 60_000_000, pa.timestamp("us")),
                  "code": pa.array(codes), "numeric_value": pa.array(values)})
    tok = Tokenizer.fit([t], TokenizerConfig(min_count=1, n_value_bins=10))
    seq = tok.encode_table(t)[0]
    got = [tok.vocab[x] for x in seq if tok.vocab[x].startswith("VALUE//")]
    want = [f"VALUE//Q{np.searchsorted(tok.value_edges[c], v, side='right') + 1}"
            for c, v in zip(codes, values) if np.isfinite(v)]
    assert got == want
    assert len(tok.value_edges["X"]) == 9


def test_encode_events_until_hides_the_future_and_matches_the_full_encoding(tokens):
    tok = Tokenizer.load(tokens)
    s1 = train_subjects()[0]
    df = pd.DataFrame(s1, columns=["subject_id", "time", "code", "numeric_value"])
    full = tok.encode_events(df, add_eos=True)
    cut = T0 + timedelta(days=2)
    early = tok.encode_events(df.sample(frac=1, random_state=0), until=cut)  # order of input rows does not matter
    assert early.dtype == np.int32
    assert np.array_equal(early, full[: early.size])
    assert tok.decode(early)[-1]["code"] == "B" and tok.decode(early)[-1]["gap"] == "1d-7d"
    assert "RARE" not in tok.describe(early) and "[UNK]" not in tok.describe(early)
    assert tok.encode_events(df, until=T0 - timedelta(days=1)).tolist() == [BOS, tok.token_id["SEX//F"],
                                                                              tok.token_id["AGE//UNKNOWN"]]


def test_store_layout_index_and_manifest(meds, tokens):
    manifest = json.loads((tokens / "manifest.json").read_text())
    tok = Tokenizer.load(tokens / "tokenizer")
    assert manifest["vocab_size"] == tok.vocab_size
    assert set(manifest["splits"]) == {"train", "tuning", "held_out"}
    ds = read_meds(meds)
    for split, stats in manifest["splits"].items():
        stream = np.load(tokens / split / "tokens.npy", mmap_mode="r")
        index = pq.read_table(tokens / split / "index.parquet").to_pandas()
        assert stats["tokens"] == stream.size == index.length.sum()
        assert stats["subjects"] == len(index) == ds.n_subjects(split)
        assert (index.offset.to_numpy() == np.r_[0, np.cumsum(index.length)[:-1]]).all()
        assert (stream[index.offset] == BOS).all() and (stream[index.offset + index.length - 1] == EOS).all()
        assert (stream == BOS).sum() == len(index) and not (stream == PAD).any()
    assert manifest["splits"]["train"]["tokens_per_subject_median"] > 10
    assert not list(tokens.rglob(".*tmp*"))


def test_windows_mark_subject_boundaries(tokens):
    w = TokenWindows(tokens, "train", 16)
    stream = np.load(tokens / "train" / "tokens.npy")
    assert len(w) == (stream.size - 1) // 16
    for i in range(len(w)):
        item = w[i]
        assert item["tokens"].dtype == np.int32 and item["tokens"].shape == (17,)
        assert np.array_equal(item["tokens"], stream[i * 16: i * 16 + 17])
        seg = item["segment_ids"]
        assert seg[0] == 0 and (np.diff(seg) >= 0).all()
        starts = np.nonzero(np.diff(seg))[0] + 1
        assert (item["tokens"][starts] == BOS).all() and (item["tokens"][starts - 1] == EOS).all()
    with pytest.raises(IndexError):
        w[len(w)]


def test_tokenizing_the_simulator_cohort(tiny_dataset):
    meds_dir, token_dir = tiny_dataset
    manifest = json.loads((token_dir / "manifest.json").read_text())
    tok = Tokenizer.load(token_dir)
    assert manifest["vocab_size"] == tok.vocab_size > 300
    assert "LOINC//4548-4" in tok.value_edges and len(tok.value_edges["LOINC//4548-4"]) >= 8
    stream = np.load(token_dir / "train" / "tokens.npy", mmap_mode="r")
    assert (stream < tok.vocab_size).all() and (stream >= 0).all()
    assert 0 < (stream == UNK).mean() < 0.05
