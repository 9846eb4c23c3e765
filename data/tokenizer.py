"""Event tokenizer, fitted on the train split only: codes, per-code value quantiles, time gaps, demographics.

A subject becomes  BOS SEX//x AGE//a-b  [TIME//gap] code [VALUE//Qk]  ...  EOS

- code tokens: codes seen at least `min_count` times in train; everything else is UNK.
- value tokens: VALUE//Q1..Qn are shared by all codes; for each code, the bin edges are that code's
  train quantiles (deciles by default), so `LOINC//4548-4 VALUE//Q10` reads 'HbA1c in its top tenth'.
  Codes with fewer than `min_count` train values, or unknown codes, get no value token.
- time tokens: the gap since the subject's previous event, binned by `time_bins` (ETHOS/CEHR-BERT
  style); gaps shorter than the first edge (simultaneous events) get none.
- prefix: sex from the subject's GENDER//* or SEX//* code, age at the first event (after birth) in
  `age_bin_years` bins from MEDS_BIRTH; those rows are not repeated as events.

Special ids: PAD=0, UNK=1, BOS=2, EOS=3, MASK=4 (ids below N_SPECIAL are never masked or predicted
as masked tokens).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from data.parquet_io import write_json

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]"]
N_SPECIAL = len(SPECIAL_TOKENS)
BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIXES = ("GENDER//", "SEX//")
SEX_TOKENS = ["SEX//F", "SEX//M", "SEX//UNKNOWN"]
US = {"s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
DEFAULT_TIME_BINS = ("5min", "1h", "1d", "7d", "30d", "90d", "180d", "365d", "730d")
FORMAT_VERSION = 1


def parse_duration(text: str) -> int:
    """'5min', '1h', '7d', '30s' -> microseconds."""
    for unit in ("min", "s", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * US[unit])
    raise ValueError(f"cannot read duration {text!r}: use a number and one of s, min, h, d (e.g. '5min', '7d')")


@dataclass(frozen=True)
class TokenizerConfig:
    min_count: int = 5
    n_value_bins: int = 10
    time_bins: tuple[str, ...] = DEFAULT_TIME_BINS   # lower edges of the gap bins, increasing
    age_bin_years: int = 5
    max_age_years: int = 100
    fit_max_value_rows: int = 20_000_000   # numeric values used for the quantiles (first train shards)

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if not 1 <= self.n_value_bins <= 100:
            raise ValueError(f"n_value_bins must be in 1..100, got {self.n_value_bins}")
        edges = [parse_duration(b) for b in self.time_bins]
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"time_bins must be non-empty and increasing, got {self.time_bins}")
        object.__setattr__(self, "time_bins", tuple(self.time_bins))


def _time_token_names(bins: tuple[str, ...]) -> list[str]:
    return [f"TIME//{lo}-{hi}" for lo, hi in zip(bins, bins[1:])] + [f"TIME//{bins[-1]}+"]


def _age_token_names(cfg: TokenizerConfig) -> list[str]:
    step = cfg.age_bin_years
    names = [f"AGE//{a}-{a + step}" for a in range(0, cfg.max_age_years, step)]
    return names + [f"AGE//{cfg.max_age_years}+", "AGE//UNKNOWN"]


@dataclass
class Tokenizer:
    config: TokenizerConfig
    codes: list[str]                         # code tokens in id order
    value_edges: dict[str, list[float]]      # code -> increasing inner quantile edges
    code_counts: dict[str, int] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.time_tokens = _time_token_names(self.config.time_bins)
        self.age_tokens = _age_token_names(self.config)
        self.value_tokens = [f"VALUE//Q{i + 1}" for i in range(self.config.n_value_bins)]
        self.vocab = (SPECIAL_TOKENS + SEX_TOKENS + self.age_tokens + self.time_tokens + self.value_tokens
                      + list(self.codes))
        self.token_id = {t: i for i, t in enumerate(self.vocab)}
        self.sex_base = N_SPECIAL
        self.age_base = self.sex_base + len(SEX_TOKENS)
        self.time_base = self.age_base + len(self.age_tokens)
        self.value_base = self.time_base + len(self.time_tokens)
        self.code_base = self.value_base + len(self.value_tokens)
        self.time_edges_us = np.array([parse_duration(b) for b in self.config.time_bins], dtype=np.int64)
        # flattened per-code edges for the vectorized binning
        self._binned_codes = sorted(self.value_edges)
        self._bin_slot = {c: i for i, c in enumerate(self._binned_codes)}
        width = max((len(e) for e in self.value_edges.values()), default=0)
        self._edge_matrix = np.full((len(self._binned_codes), max(width, 1)), np.inf)
        for i, c in enumerate(self._binned_codes):
            self._edge_matrix[i, : len(self.value_edges[c])] = self.value_edges[c]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ----- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, train_tables, config: TokenizerConfig = TokenizerConfig(), descriptions=None) -> "Tokenizer":
        """Fit on an iterable of train-split tables (at least code and numeric_value columns)."""
        counter = _CodeCounter(config.fit_max_value_rows)
        for table in train_tables:
            counter.add(table)
        counts = counter.counts()
        kept = sorted((c for c, n in counts.items() if n >= config.min_count and not _is_prefix_code(c)),
                      key=lambda c: (-counts[c], c))
        edges = counter.quantile_edges(set(kept), config.n_value_bins, config.min_count)
        kept_set = set(kept)
        descriptions = {c: d for c, d in (descriptions or {}).items() if c in kept_set}
        return cls(config, kept, edges, {c: counts[c] for c in kept}, descriptions)

    # ----- persistence -----------------------------------------------------------------------------
    def save(self, folder) -> Path:
        folder = Path(folder)
        write_json({"format_version": FORMAT_VERSION, "config": asdict(self.config), "vocab": self.vocab,
                    "codes": self.codes, "value_edges": self.value_edges, "code_counts": self.code_counts,
                    "descriptions": self.descriptions}, folder / "tokenizer.json")
        return folder

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Load from a tokenizer folder, its tokenizer.json, or a token folder holding tokenizer/."""
        path = Path(path)
        for candidate in (path, path / "tokenizer.json", path / "tokenizer" / "tokenizer.json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"no tokenizer.json at {path} (nor in {path}/tokenizer/)")
        blob = json.loads(path.read_text())
        cfg = blob["config"]
        cfg["time_bins"] = tuple(cfg["time_bins"])
        tok = cls(TokenizerConfig(**cfg), blob["codes"], {k: list(v) for k, v in blob["value_edges"].items()},
                  blob.get("code_counts", {}), blob.get("descriptions", {}))
        if tok.vocab != blob["vocab"]:
            raise ValueError(f"{path}: stored vocabulary does not match its config (written by another version?)")
        return tok

    # ----- encoding --------------------------------------------------------------------------------
    def encode_table(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens of every subject in a MEDS table sorted by (subject_id, time).

        Returns (tokens int32[T], subject_ids int64[S], lengths int64[S]); subject s occupies
        tokens[offset_s : offset_s + lengths[s]] with offsets the running sum of lengths.
        """
        sid = np.asarray(table["subject_id"].cast(pa.int64()).to_numpy())
        n = sid.size
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        time_col = table["time"].cast(pa.timestamp("us")).combine_chunks()
        has_time = ~np.asarray(time_col.is_null().to_numpy(zero_copy_only=False))
        t = np.asarray(time_col.cast(pa.int64()).fill_null(0).to_numpy())
        code_ids, is_birth, sex_tok = self._code_columns(table["code"])
        value = table["numeric_value"].cast(pa.float64()).to_numpy(zero_copy_only=False)
        value = np.asarray(value, dtype=np.float64)

        new_subject = np.empty(n, dtype=bool)
        new_subject[0] = True
        np.not_equal(sid[1:], sid[:-1], out=new_subject[1:])
        starts = np.flatnonzero(new_subject)
        subj_of_row = np.cumsum(new_subject) - 1
        subjects = sid[starts]
        # prefix: sex (last sex code of the subject wins) and age at the first timed non-birth event
        sex = np.full(starts.size, self.token_id["SEX//UNKNOWN"], dtype=np.int64)
        has_sex = sex_tok >= 0
        sex[subj_of_row[has_sex]] = sex_tok[has_sex]
        birth = np.full(starts.size, np.iinfo(np.int64).min)
        b_rows = is_birth & has_time
        birth[subj_of_row[b_rows]] = t[b_rows]
        event = ~is_birth & ~has_sex
        timed_event = event & has_time
        first_time = np.full(starts.size, np.iinfo(np.int64).max)
        te = np.flatnonzero(timed_event)  # rows are sorted by (subject, time): take each subject's first
        te_subj = subj_of_row[te]
        first = np.r_[True, te_subj[1:] != te_subj[:-1]] if te.size else np.zeros(0, bool)
        first_time[te_subj[first]] = t[te[first]]
        age = self._age_tokens(birth, first_time)

        # per event row: [time gap token] code token [value token]; prefix rows yield no tokens
        rows = np.arange(n)
        prev = np.where(timed_event, rows, -1)
        np.maximum.accumulate(prev, out=prev)
        prev = np.r_[-1, prev[:-1]]                  # previous timed event row, any subject
        prev_safe = np.maximum(prev, 0)
        gap_ok = timed_event & (prev >= 0) & (subj_of_row[prev_safe] == subj_of_row)
        gap = np.where(gap_ok, t - t[prev_safe], -1)
        time_tok = np.where(gap >= self.time_edges_us[0],
                            self.time_base + np.searchsorted(self.time_edges_us, gap, side="right") - 1, -1)
        val_tok = self._value_tokens(code_ids, value)
        val_tok[~event] = -1
        has_gap, has_val = time_tok >= 0, val_tok >= 0
        n_tok = event.astype(np.int64) + has_gap + has_val

        # each subject adds BOS, sex, age before its rows and EOS after them
        before = np.cumsum(n_tok) - n_tok
        pos = before + 4 * subj_of_row + 3
        total = int(before[-1] + n_tok[-1]) + 4 * starts.size
        subj_start = before[starts] + 4 * np.arange(starts.size)
        per_subject = np.diff(np.r_[subj_start, total])
        tokens = np.full(total, PAD, dtype=np.int32)
        tokens[subj_start] = BOS
        tokens[subj_start + 1] = sex
        tokens[subj_start + 2] = age
        tokens[subj_start + per_subject - 1] = EOS
        tokens[pos[has_gap]] = time_tok[has_gap]
        code_pos = pos + has_gap
        tokens[code_pos[event]] = code_ids[event]
        tokens[code_pos[has_val] + 1] = val_tok[has_val]
        return tokens, subjects, per_subject

    def encode_events(self, events, *, until=None, add_eos: bool = False) -> np.ndarray:
        """Tokens of ONE subject's events (pandas/polars DataFrame or arrow table), optionally only
        those at or before `until` (a timestamp): what a model may see at prediction time `until`.
        Static rows (null time) and the birth row are always kept. No EOS unless `add_eos`."""
        table = _as_table(events)
        if table.num_rows and pc.count_distinct(table["subject_id"]).as_py() > 1:
            raise ValueError("encode_events takes one subject's events; use encode_table for many")
        if until is not None:
            t = table["time"].cast(pa.timestamp("us"))
            cutoff = pa.scalar(pd.Timestamp(until).to_datetime64().astype("datetime64[us]"), type=pa.timestamp("us"))
            keep = pc.or_kleene(pc.is_null(t), pc.less_equal(t, cutoff))
            table = table.filter(keep)
        order = np.lexsort((np.asarray(table["time"].cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()),))
        table = table.take(pa.array(order))
        tokens, _, _ = self.encode_table(table)
        if tokens.size == 0:
            return np.array([BOS, self.token_id["SEX//UNKNOWN"], self.token_id["AGE//UNKNOWN"]], dtype=np.int32)
        return tokens if add_eos else tokens[:-1]

    def _code_columns(self, column: pa.ChunkedArray):
        ids, birth, sex = [], [], []
        lookup = self.token_id
        for chunk in column.chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.cast(pa.string()).dictionary_encode()
            dictionary = chunk.dictionary.to_pylist()
            indices = np.asarray(chunk.indices.to_numpy(zero_copy_only=False))
            d_ids = np.array([lookup.get(c, UNK) if not _is_prefix_code(c) else UNK for c in dictionary] + [UNK],
                             dtype=np.int32)
            d_birth = np.array([c == BIRTH_CODE for c in dictionary] + [False])
            d_sex = np.array([_sex_token(c, lookup) for c in dictionary] + [-1], dtype=np.int64)
            indices = np.where(chunk.is_null().to_numpy(zero_copy_only=False), len(dictionary), indices)
            ids.append(d_ids[indices])
            birth.append(d_birth[indices])
            sex.append(d_sex[indices])
        return np.concatenate(ids), np.concatenate(birth), np.concatenate(sex)

    def _age_tokens(self, birth: np.ndarray, first_time: np.ndarray) -> np.ndarray:
        cfg = self.config
        known = (birth != np.iinfo(np.int64).min) & (first_time != np.iinfo(np.int64).max)
        years = (first_time - np.where(known, birth, 0)) / (365.25 * US["d"])
        bins = np.clip(np.floor(np.maximum(years, 0) / cfg.age_bin_years), 0, cfg.max_age_years // cfg.age_bin_years)
        out = self.age_base + bins.astype(np.int64)
        return np.where(known, out, self.token_id["AGE//UNKNOWN"])

    def _value_tokens(self, code_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """VALUE//Qk token per row (or -1): the bin of the value among its code's train quantile edges."""
        out = np.full(code_ids.size, -1, dtype=np.int64)
        if not self._binned_codes or code_ids.size == 0:
            return out
        slot_of_token = np.full(self.vocab_size, -1, dtype=np.int64)
        for code, slot in self._bin_slot.items():
            if code in self.token_id:
                slot_of_token[self.token_id[code]] = slot
        slot = slot_of_token[code_ids]
        rows = np.nonzero((slot >= 0) & np.isfinite(values))[0]
        if rows.size == 0:
            return out
        slot_r, v = slot[rows], values[rows]
        # bin = number of the code's edges <= value; edges padded with +inf to a common width
        edges = self._edge_matrix[slot_r]
        bins = np.zeros(rows.size, dtype=np.int64)
        for j in range(self._edge_matrix.shape[1]):
            bins += edges[:, j] <= v
        out[rows] = self.value_base + bins
        return out

    # ----- decoding --------------------------------------------------------------------------------
    def decode(self, tokens) -> list[dict]:
        """Readable events: one dict per code (with its value range and the gap before it) or prefix token."""
        events: list[dict] = []
        gap = None
        for tok in np.asarray(tokens).tolist():
            name = self.vocab[tok] if 0 <= tok < self.vocab_size else f"<invalid {tok}>"
            if tok in (PAD, BOS, EOS, MASK) or name.startswith(("SEX//", "AGE//")) or not 0 <= tok < self.vocab_size:
                events.append({"token": name})
            elif name.startswith("TIME//"):
                gap = name.removeprefix("TIME//")
            elif name.startswith("VALUE//") and events and "code" in events[-1]:
                events[-1]["value_bin"] = int(name.removeprefix("VALUE//Q"))
                events[-1]["value_range"] = self.value_range(events[-1]["code"], events[-1]["value_bin"])
            else:
                events.append({"code": name, "gap": gap, "description": self.descriptions.get(name)})
                gap = None
        return events

    def value_range(self, code: str, q: int) -> tuple[float, float]:
        """[low, high) of value bin Q`q` (1-based) of `code` (-inf/inf at the ends)."""
        edges = [-np.inf] + list(self.value_edges.get(code, [])) + [np.inf]
        return float(edges[q - 1]), float(edges[q])

    def describe(self, tokens) -> str:
        lines = []
        for ev in self.decode(tokens):
            if "token" in ev:
                lines.append(ev["token"])
                continue
            text = ("" if ev["gap"] is None else f"(+{ev['gap']}) ") + ev["code"]
            if "value_range" in ev:
                lo, hi = ev["value_range"]
                text += f" value in [{lo:g}, {hi:g})"
            lines.append(text)
        return "\n".join(lines)


class _CodeCounter:
    """Code counts and (up to `max_value_rows`) numeric values, accumulated from dictionary-encoded tables."""

    def __init__(self, max_value_rows: int) -> None:
        self.max_value_rows = max_value_rows
        self.gid: dict[str, int] = {}
        self.count = np.zeros(0, dtype=np.int64)
        self.value_gid: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.n_values = 0

    def add(self, table: pa.Table) -> None:
        value_col = table["numeric_value"].cast(pa.float64())
        offset = 0
        for chunk in table["code"].chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.cast(pa.string()).dictionary_encode()
            dictionary = chunk.dictionary.to_pylist()
            for code in dictionary:
                if code not in self.gid:
                    self.gid[code] = len(self.gid)
            to_gid = np.array([self.gid[c] for c in dictionary] + [-1], dtype=np.int64)
            indices = np.asarray(chunk.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False))
            gids = to_gid[indices]
            if self.count.size < len(self.gid):
                self.count = np.concatenate([self.count, np.zeros(len(self.gid) - self.count.size, np.int64)])
            valid = gids >= 0
            self.count += np.bincount(gids if valid.all() else gids[valid], minlength=self.count.size)
            if self.n_values < self.max_value_rows:
                vals = value_col.slice(offset, len(chunk)).to_numpy(zero_copy_only=False)
                vals = np.asarray(vals, dtype=np.float64)
                has = valid & np.isfinite(vals)
                self.value_gid.append(gids[has])
                self.values.append(vals[has])
                self.n_values += int(has.sum())
            offset += len(chunk)

    def counts(self) -> dict[str, int]:
        return {c: int(self.count[i]) for c, i in self.gid.items() if self.count[i] > 0}

    def quantile_edges(self, kept: set[str], n_bins: int, min_count: int) -> dict[str, list[float]]:
        """Per kept code with >= min_count values: sorted unique inner quantiles (linear interpolation)."""
        if not self.values:
            return {}
        gid = np.concatenate(self.value_gid)
        vals = np.concatenate(self.values)
        names = np.empty(len(self.gid), dtype=object)
        for c, i in self.gid.items():
            names[i] = c
        small = gid.astype(np.int16) if len(self.gid) < 2**15 else gid  # int16 sorts by radix, in O(n)
        order = np.argsort(small, kind="stable")
        gid, vals = gid[order], vals[order]
        starts = np.r_[0, np.nonzero(np.diff(gid))[0] + 1]
        ends = np.r_[starts[1:], gid.size]
        qs = np.arange(1, n_bins) / n_bins
        edges = {}
        for start, end in zip(starts, ends):
            code = names[gid[start]]
            if end - start < min_count or code not in kept:
                continue
            edges[code] = sorted({float(x) for x in np.quantile(vals[start:end], qs, method="linear")})
        return edges


def _is_prefix_code(code: str) -> bool:
    return code == BIRTH_CODE or code.startswith(SEX_PREFIXES)


def _sex_token(code: str, lookup: dict) -> int:
    if not code.startswith(SEX_PREFIXES):
        return -1
    value = code.split("//", 1)[1].upper()
    if value in ("F", "FEMALE", "W", "WOMAN"):
        return lookup["SEX//F"]
    if value in ("M", "MALE", "MAN"):
        return lookup["SEX//M"]
    return lookup["SEX//UNKNOWN"]


def _as_table(events) -> pa.Table:
    if isinstance(events, pa.Table):
        table = events
    elif isinstance(events, pl.DataFrame):
        table = events.to_arrow()
    elif isinstance(events, pd.DataFrame):
        table = pa.Table.from_pandas(events, preserve_index=False)
    else:
        raise TypeError(f"events must be a pandas/polars DataFrame or a pyarrow Table, not {type(events).__name__}")
    missing = [c for c in ("time", "code") if c not in table.column_names]
    if missing:
        raise ValueError(f"events need columns time and code (missing: {', '.join(missing)})")
    if "subject_id" not in table.column_names:
        table = table.append_column("subject_id", pa.array(np.zeros(table.num_rows, np.int64)))
    if "numeric_value" not in table.column_names:
        table = table.append_column("numeric_value", pa.nulls(table.num_rows, pa.float64()))
    return table.select(["subject_id", "time", "code", "numeric_value"])
