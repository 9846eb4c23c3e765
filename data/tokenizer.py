"""Event tokenizer, fitted on the train split only: codes, per-code value quantiles, time gaps, demographics.

A subject becomes  BOS SEX//x AGE//a-b  [TIME//gap] code [VALUE//Qk]  ...  EOS

- code tokens: codes seen at least `min_count` times in train; everything else is UNK.
- value tokens: VALUE//Q1..Qn are shared by all codes; for each code, the bin edges are that code's
  train quantiles (deciles by default), so `LOINC//4548-4 VALUE//Q10` reads 'HbA1c in its top tenth'.
  Codes with fewer than `min_count` train values, or unknown codes, get no value token.
- time tokens: the gap since the subject's previous event, binned by `time_bins` (CEHR-BERT style);
  gaps shorter than the first edge (simultaneous events) get none. `time_scheme`:
    bins      (default) one token per gap; every gap past the last edge is TIME//730d+ (absolute time
              is lost past it)
    interval  ETHOS style: a gap of k whole last-edge units and a remainder r is k repeats of the unit
              token TIME//730d followed by r's bin token (none when r is below the first edge), so
              the sum of a subject's time tokens tracks elapsed time at any distance (k <= MAX_REPEATS)
- values: `n_value_bins` quantiles per code (0: no value tokens at all). `value_scheme`:
    separate  (default) `code VALUE//Qk`, two tokens, the bin tokens shared by all codes
    fused     one token `code//Qk` per (binned code, bin): one token per event, a larger vocabulary
- prefix (`demographics: true`, default): sex from the subject's GENDER//* or SEX//* code, age at the
  first event (after birth) in `age_bin_years` bins from MEDS_BIRTH; those rows are not repeated as
  events. With `demographics: false` the prefix is BOS alone (the SEX/AGE tokens stay in the vocabulary,
  never emitted) and the sex and birth rows are still dropped. `prefix_len` says which.

Static rows (null time: eye colour, height) are events without a time token, at the start of the
subject; a subject without MEDS_BIRTH gets AGE//UNKNOWN.

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

from medscale.atomic import write_json

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]"]
N_SPECIAL = len(SPECIAL_TOKENS)
BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIXES = ("GENDER//", "SEX//")
SEX_TOKENS = ["SEX//F", "SEX//M", "SEX//UNKNOWN"]
US = {"s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
DEFAULT_TIME_BINS = ("5min", "1h", "1d", "7d", "30d", "90d", "180d", "365d", "730d")
FORMAT_VERSION = 1
MAX_REPEATS = 64     # interval scheme: at most this many unit tokens for one gap (128 years of 730d)
TIME_SCHEMES = ("bins", "interval")
VALUE_SCHEMES = ("separate", "fused")
ENCODE_ROWS = 1 << 17   # rows encoded at a time (whole subjects): cache-sized temporaries
_BIRTH_MARK = -1   # _code_column: the birth row (sex rows are minus their sex token, all < -1)


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
    time_scheme: str = "bins"         # bins | interval (see the module doc)
    value_scheme: str = "separate"    # separate | fused
    demographics: bool = True         # BOS SEX AGE prefix (True) or BOS alone

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if not 0 <= self.n_value_bins <= 100:
            raise ValueError(f"n_value_bins must be in 0..100 (0: no value tokens), got {self.n_value_bins}")
        if self.time_scheme not in TIME_SCHEMES:
            raise ValueError(f"time_scheme must be one of {', '.join(TIME_SCHEMES)}, got {self.time_scheme!r}")
        if self.value_scheme not in VALUE_SCHEMES:
            raise ValueError(f"value_scheme must be one of {', '.join(VALUE_SCHEMES)}, got {self.value_scheme!r}")
        edges = [parse_duration(b) for b in self.time_bins]
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"time_bins must be non-empty and increasing, got {self.time_bins}")
        object.__setattr__(self, "time_bins", tuple(self.time_bins))


def _time_token_names(bins: tuple[str, ...], scheme: str = "bins") -> list[str]:
    last = f"TIME//{bins[-1]}" if scheme == "interval" else f"TIME//{bins[-1]}+"
    return [f"TIME//{lo}-{hi}" for lo, hi in zip(bins, bins[1:])] + [last]


def config_from_dict(raw: dict) -> TokenizerConfig:
    """A TokenizerConfig from its asdict() form (older files lack the newer keys: their defaults)."""
    raw = dict(raw)
    raw["time_bins"] = tuple(raw["time_bins"])
    return TokenizerConfig(**raw)


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
        cfg = self.config
        self.time_tokens = _time_token_names(cfg.time_bins, cfg.time_scheme)
        self.age_tokens = _age_token_names(cfg)
        fused = cfg.value_scheme == "fused"
        self.value_tokens = [] if fused else [f"VALUE//Q{i + 1}" for i in range(cfg.n_value_bins)]
        # fused: n_value_bins tokens per binned code, in the order of sorted(value_edges), after the codes
        self.fused_tokens = ([f"{c}//Q{i + 1}" for c in sorted(self.value_edges) for i in range(cfg.n_value_bins)]
                             if fused else [])
        self.vocab = (SPECIAL_TOKENS + SEX_TOKENS + self.age_tokens + self.time_tokens + self.value_tokens
                      + list(self.codes) + self.fused_tokens)
        self.token_id = {t: i for i, t in enumerate(self.vocab)}
        self.sex_base = N_SPECIAL
        self.age_base = self.sex_base + len(SEX_TOKENS)
        self.time_base = self.age_base + len(self.age_tokens)
        self.value_base = self.time_base + len(self.time_tokens)
        self.code_base = self.value_base + len(self.value_tokens)
        self.fused_base = self.code_base + len(self.codes)
        self.time_edges_us = np.array([parse_duration(b) for b in self.config.time_bins], dtype=np.int64)
        # flattened per-code edges for the vectorized binning
        self._binned_codes = sorted(self.value_edges)
        self._bin_slot = {c: i for i, c in enumerate(self._binned_codes)}
        width = max((len(e) for e in self.value_edges.values()), default=0)
        self._edge_matrix = np.full((len(self._binned_codes), max(width, 1)), np.inf)
        for i, c in enumerate(self._binned_codes):
            self._edge_matrix[i, : len(self.value_edges[c])] = self.value_edges[c]
        self._slot_of_token = np.full(self.vocab_size, -1, dtype=np.int64)
        for code, slot in self._bin_slot.items():
            if code in self.token_id:
                self._slot_of_token[self.token_id[code]] = slot
        # power-of-two width with at least one +inf pad per row, for the binary search in _value_rows
        search_width = 1 << int(self._edge_matrix.shape[1]).bit_length()
        search = np.full((len(self._binned_codes), search_width), np.inf)
        search[:, : self._edge_matrix.shape[1]] = self._edge_matrix
        m = self._edge_matrix
        self._edge_search = (search.ravel(), search_width) if bool(np.all(m[:, 1:] >= m[:, :-1])) else None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def prefix_len(self) -> int:
        """Tokens before a subject's first event: BOS SEX AGE, or BOS alone without demographics."""
        return 3 if self.config.demographics else 1

    def empty_history(self) -> np.ndarray:
        """The tokens of a subject with no events (no EOS)."""
        prefix = [BOS, self.token_id["SEX//UNKNOWN"], self.token_id["AGE//UNKNOWN"]]
        return np.array(prefix[: self.prefix_len], dtype=np.int32)

    def is_event_token(self, tokens: np.ndarray) -> np.ndarray:
        """Which tokens stand for one event each (a code, UNK, or a fused code+value)."""
        tokens = np.asarray(tokens)
        return (tokens >= self.code_base) | (tokens == UNK)

    # ----- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, train_tables, config: TokenizerConfig = TokenizerConfig(), descriptions=None) -> "Tokenizer":
        """Fit on an iterable of train-split tables (at least code and numeric_value columns)."""
        counter = _CodeCounter(config.fit_max_value_rows)
        for table in train_tables:
            counter.add(table)
        return cls.from_counter(counter, config, descriptions)

    @classmethod
    def from_counter(cls, counter: "_CodeCounter", config: TokenizerConfig, descriptions=None) -> "Tokenizer":
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
        write_json(folder / "tokenizer.json", {"format_version": FORMAT_VERSION, "config": asdict(self.config), "vocab": self.vocab,
                    "codes": self.codes, "value_edges": self.value_edges, "code_counts": self.code_counts,
                    "descriptions": self.descriptions})
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
        tok = cls(config_from_dict(blob["config"]), blob["codes"], {k: list(v) for k, v in blob["value_edges"].items()},
                  blob.get("code_counts", {}), blob.get("descriptions", {}))
        if tok.vocab != blob["vocab"]:
            raise ValueError(f"{path}: stored vocabulary does not match its config (written by another version?)")
        return tok

    # ----- encoding --------------------------------------------------------------------------------
    def encode_table(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens of every subject in a MEDS table sorted by (subject_id, time).

        Returns (tokens int32[T], subject_ids int64[S], lengths int64[S]); subject s occupies
        tokens[offset_s : offset_s + lengths[s]] with offsets the running sum of lengths.

        Vectorized in a few passes over the rows (no loop over subjects): the tokens of event row r,
        [time] code [value], are scattered to their place, found from one running sum of the number
        of tokens per row.
        """
        sid = np.asarray(table["subject_id"].cast(pa.int64()).to_numpy())
        n = sid.size
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        # times and values as they lie in arrow's buffers, with their validity (None: no nulls); what
        # null slots hold is never read
        t, has_time = _buffer_and_validity(table["time"].cast(pa.timestamp("us")).cast(pa.int64()), np.int64)
        code = self._code_column(table["code"])
        value = table["numeric_value"]
        if not (pa.types.is_float32(value.type) or pa.types.is_float64(value.type)):
            value = value.cast(pa.float64())
        # float32 values compare with the float64 edges exactly as their float64 casts would
        value, has_value = _buffer_and_validity(value, np.float32 if pa.types.is_float32(value.type) else np.float64)
        # subjects are encoded independently: do it in slices of whole subjects, ENCODE_ROWS rows or so
        # each, so that the temporaries stay in the CPU caches (and are reused rather than page-faulted)
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if n > ENCODE_ROWS else np.zeros(1, np.int64)
        cuts = np.unique(np.r_[starts[np.searchsorted(starts, np.arange(ENCODE_ROWS, n, ENCODE_ROWS))
                                      .clip(max=starts.size - 1)], n]) if n > ENCODE_ROWS else np.array([n])
        parts = []
        a = 0
        for b in cuts.tolist():
            if b <= a:
                continue
            parts.append(self._encode_rows(sid[a:b], t[a:b], None if has_time is None else has_time[a:b], code[a:b],
                                           value[a:b], None if has_value is None else has_value[a:b]))
            a = b
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _encode_rows(self, sid, t, has_time, code, value, has_value):
        """encode_table on numpy columns (code as from _code_column), whole subjects."""
        n = sid.size
        new_subject = np.empty(n, dtype=bool)
        new_subject[0] = True
        np.not_equal(sid[1:], sid[:-1], out=new_subject[1:])
        starts = np.flatnonzero(new_subject)
        n_subj = starts.size
        subjects = sid[starts]
        event = code >= 0
        # prefix: sex (last sex code of the subject wins) and age at the first timed non-birth event
        sex = np.full(n_subj, self.token_id["SEX//UNKNOWN"], dtype=np.int64)
        birth = np.full(n_subj, np.iinfo(np.int64).min)
        prefix_rows = np.flatnonzero(~event)
        if prefix_rows.size:
            prefix_code = code[prefix_rows]
            prefix_subj = np.searchsorted(starts, prefix_rows, side="right") - 1
            is_sex = prefix_code < _BIRTH_MARK
            sex[prefix_subj[is_sex]] = -prefix_code[is_sex]
            is_birth = ~is_sex if has_time is None else ~is_sex & has_time[prefix_rows]
            birth[prefix_subj[is_birth]] = t[prefix_rows[is_birth]]
        timed = np.flatnonzero(event if has_time is None else event & has_time)
        first_time = np.full(n_subj, np.iinfo(np.int64).max)
        # time gaps between consecutive timed events of a subject (rows are sorted by subject, time)
        timed_sid = sid[timed]
        first_of_subj = np.empty(timed.size, dtype=bool)
        first_of_subj[:1] = True
        np.not_equal(timed_sid[1:], timed_sid[:-1], out=first_of_subj[1:])
        del timed_sid
        firsts = timed[first_of_subj]
        first_time[np.searchsorted(starts, firsts, side="right") - 1] = t[firsts]
        age = self._age_tokens(birth, first_time)
        timed_t = t[timed]
        gap = timed_t[1:] - timed_t[:-1]
        del timed_t
        gap_ok = gap >= self.time_edges_us[0]
        gap_ok[first_of_subj[1:]] = False
        del first_of_subj
        k = np.flatnonzero(gap_ok)
        del gap_ok
        gap_rows = timed[k + 1]
        gap = gap[k]
        del timed, k
        if self.config.time_scheme == "interval":
            gap_rows, time_tok, n_time = self._interval_tokens(gap_rows, gap)
        else:
            time_tok = (self.time_base - 1) + np.searchsorted(self.time_edges_us, gap, side="right")
            n_time = None
        del gap
        val_rows, val_tok = self._value_rows(code, value, has_value, event)
        fused = self.config.value_scheme == "fused"
        if fused and val_rows.size:   # the value's bin picks the code's own token: one token per event
            code = code.copy()
            slot = self._slot_of_token[code[val_rows]]
            code[val_rows] = self.fused_base + slot * self.config.n_value_bins + (val_tok - self.value_base)
            val_rows, val_tok = val_rows[:0], val_tok[:0]
        prefix = self.prefix_len

        # tokens per row (+prefix+1 at each subject's first row: its BOS [sex, age] and EOS); with their
        # running sum `end`, row r's tokens end just before end[r] - 1 (the one slot left for its subject's
        # EOS); a row's time tokens come first, at end[r] - width[r] - 1
        max_time = 1 if n_time is None else MAX_REPEATS + 1
        index_type = np.int32 if (6 + max_time) * n < 2**31 - 8 else np.int64
        width = event.view(np.int8).astype(index_type)
        if n_time is None:
            width[gap_rows] += 1
        else:
            np.add.at(width, gap_rows, 1)   # a row may carry several time tokens
        width[val_rows] += 1
        width[starts] += prefix + 1
        end = np.cumsum(width, dtype=index_type)
        total = int(end[-1])
        subj_start = (end[starts] - width[starts]).astype(np.int64)
        tokens = np.zeros(total + 1, dtype=np.int32)   # every position is written below (PAD=0); +1 scratch
        tokens[subj_start] = BOS
        if prefix == 3:
            tokens[subj_start + 1] = sex
            tokens[subj_start + 2] = age
        subj_end = np.empty(n_subj, dtype=np.int64)
        subj_end[:-1] = subj_start[1:]
        subj_end[-1] = total
        tokens[subj_end - 1] = EOS
        first_time_slot = end[gap_rows] - width[gap_rows] - 1   # gap rows never start a subject
        if n_time is not None:   # the j-th time token of a row: its first slot + j
            first_time_slot = first_time_slot + n_time
        tokens[first_time_slot] = time_tok
        del width
        val_end = end[val_rows]
        end -= 2                        # the code token of rows without a value; prefix rows write nothing:
        end[prefix_rows] = total        # their code goes to the scratch slot
        tokens[end] = code
        del end
        tokens[val_end - 3] = code[val_rows]
        tokens[val_end - 2] = val_tok
        return tokens[:total], subjects, np.diff(subj_start, append=total)

    def _interval_tokens(self, rows: np.ndarray, gap: np.ndarray):
        """ETHOS-style time tokens for gaps >= the first edge: per gap, k = gap // unit repeats of the unit
        token (unit = the last edge; k <= MAX_REPEATS), then the remainder's bin token if it reaches the
        first edge. Returns (row of each token, token, index of the token within its row), rows in order."""
        edges = self.time_edges_us
        unit = edges[-1]
        k = np.minimum(gap // unit, MAX_REPEATS)
        rest = np.minimum(gap - k * unit, unit - 1)
        has_rest = rest >= edges[0]
        count = k + has_rest
        row = np.repeat(rows, count)
        # position of each token within its row's run: 0..count-1
        run_start = np.repeat(np.cumsum(count) - count, count)
        j = np.arange(row.size) - run_start
        is_unit = j < np.repeat(k, count)
        rest_tok = (self.time_base - 1) + np.searchsorted(edges, rest, side="right")
        tok = np.where(is_unit, self.time_base + len(self.time_tokens) - 1, np.repeat(rest_tok, count))
        return row, tok, j

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
            return self.empty_history()
        return tokens if add_eos else tokens[:-1]

    def _code_column(self, column: pa.ChunkedArray) -> np.ndarray:
        """Per row: the code's token id for events (UNK when unknown or null), _BIRTH_MARK for the birth
        row, minus the sex token for sex rows. One dictionary lookup per distinct dictionary, then a take."""
        out = np.empty(len(column), dtype=np.int32)
        offset = 0
        last_dictionary, mapping = None, None
        for chunk in column.chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.cast(pa.string()).dictionary_encode()
            dictionary = chunk.dictionary
            if mapping is None or not (dictionary is last_dictionary or dictionary.equals(last_dictionary)):
                mapping = self._dictionary_codes(dictionary.to_pylist())
                last_dictionary = dictionary
            indices = chunk.indices
            if indices.null_count:
                indices = indices.fill_null(len(dictionary))   # null code -> UNK
            np.take(mapping, np.asarray(indices.to_numpy(zero_copy_only=False)), out=out[offset: offset + len(chunk)])
            offset += len(chunk)
        return out

    def _dictionary_codes(self, dictionary: list) -> np.ndarray:
        lookup = self.token_id
        ids = []
        for c in dictionary:
            if c is None:
                ids.append(UNK)
            elif c == BIRTH_CODE:
                ids.append(_BIRTH_MARK)
            elif c.startswith(SEX_PREFIXES):
                ids.append(-_sex_token(c, lookup))
            else:
                ids.append(lookup.get(c, UNK))
        return np.array(ids + [UNK], dtype=np.int32)

    def _age_tokens(self, birth: np.ndarray, first_time: np.ndarray) -> np.ndarray:
        cfg = self.config
        known = (birth != np.iinfo(np.int64).min) & (first_time != np.iinfo(np.int64).max)
        years = (first_time - np.where(known, birth, 0)) / (365.25 * US["d"])
        bins = np.clip(np.floor(np.maximum(years, 0) / cfg.age_bin_years), 0, cfg.max_age_years // cfg.age_bin_years)
        out = self.age_base + bins.astype(np.int64)
        return np.where(known, out, self.token_id["AGE//UNKNOWN"])

    def _value_rows(self, code: np.ndarray, values: np.ndarray, valid: np.ndarray | None, event: np.ndarray):
        """Rows with a VALUE//Qk token and those tokens: the bin of the value among its code's train
        quantile edges (the number of edges <= value), for event rows with a finite value of a binned code."""
        if not self._binned_codes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        finite = np.isfinite(values)
        if valid is not None:
            finite &= valid
        finite &= event
        rows = np.flatnonzero(finite)
        del finite
        slot = self._slot_of_token[code[rows]]
        keep = slot >= 0
        if not keep.all():
            rows, slot = rows[keep], slot[keep]
        v = values[rows].astype(np.float64)
        if self._edge_search is None:   # edges not sorted: count them (what the search computes otherwise)
            edges = self._edge_matrix[slot]
            bins = np.zeros(rows.size, dtype=np.int64)
            for j in range(self._edge_matrix.shape[1]):
                bins += edges[:, j] <= v
        else:                           # branchless binary search in each row's +inf padded edges
            flat, width = self._edge_search
            base = slot * width
            at = base.copy()            # base + the number of edges known to be <= v
            probe, below = np.empty_like(at), np.empty(rows.size, dtype=bool)
            edge = np.empty(rows.size, dtype=np.float64)
            step = width // 2
            while step:
                np.add(at, step - 1, out=probe)
                np.take(flat, probe, out=edge, mode="clip")
                np.less_equal(edge, v, out=below)
                np.multiply(below, step, out=probe)
                at += probe
                step //= 2
            bins = at - base
        return rows, self.value_base + bins

    # ----- decoding --------------------------------------------------------------------------------
    def decode(self, tokens) -> list[dict]:
        """Readable events: one dict per code (with its value range and the gap before it) or prefix token."""
        events: list[dict] = []
        gap = None
        for tok in np.asarray(tokens).tolist():
            name = self.vocab[tok] if 0 <= tok < self.vocab_size else f"<invalid {tok}>"
            if tok in (PAD, BOS, EOS, MASK) or name.startswith(("SEX//", "AGE//")) or not 0 <= tok < self.vocab_size:
                events.append({"token": name})
            elif name.startswith("TIME//"):   # interval scheme: a gap may be several tokens, joined by +
                gap = name.removeprefix("TIME//") if gap is None else f"{gap}+{name.removeprefix('TIME//')}"
            elif tok >= self.fused_base:
                code, q = name.rsplit("//Q", 1)
                events.append({"code": code, "gap": gap, "description": self.descriptions.get(code),
                               "value_bin": int(q), "value_range": self.value_range(code, int(q))})
                gap = None
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
    """Code counts and (up to `max_value_rows`) numeric values, accumulated from dictionary-encoded tables.

    `summarize(table)` does the per-row work (it may run in worker threads, one table each); `merge`
    folds summaries in table order, so the values kept under the cap are those of the first chunks.
    """

    def __init__(self, max_value_rows: int) -> None:
        self.max_value_rows = max_value_rows
        self.gid: dict[str, int] = {}
        self.count = np.zeros(0, dtype=np.int64)
        self.value_gid: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.n_values = 0

    def add(self, table: pa.Table) -> None:
        self.merge(self.summarize(table))

    @staticmethod
    def summarize(table: pa.Table) -> list[tuple]:
        """Per chunk: (dictionary, rows per dictionary entry, dictionary index and value of the rows with
        a finite value and a code). Values stay float32 when stored so (exact: compared and cast later)."""
        value_col = table["numeric_value"]
        if not (pa.types.is_float32(value_col.type) or pa.types.is_float64(value_col.type)):
            value_col = value_col.cast(pa.float64())
        values, valid = _buffer_and_validity(value_col, np.float32 if pa.types.is_float32(value_col.type)
                                             else np.float64)
        parts = []
        offset = 0
        for chunk in table["code"].chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.cast(pa.string()).dictionary_encode()
            size = len(chunk.dictionary)
            indices = chunk.indices
            if indices.null_count:
                indices = indices.fill_null(size)
            indices = np.asarray(indices.to_numpy(zero_copy_only=False))
            counts = np.bincount(indices, minlength=size + 1)
            vals = values[offset: offset + len(chunk)]
            has = np.isfinite(vals)
            if valid is not None:
                has &= valid[offset: offset + len(chunk)]
            if counts[size]:
                has &= indices < size
            parts.append((chunk.dictionary, counts[:size], indices[has], vals[has]))
            offset += len(chunk)
        return parts

    def merge(self, parts: list[tuple]) -> None:
        last_dictionary, to_gid = None, None
        for dictionary, counts, value_index, vals in parts:
            if to_gid is None or not (dictionary is last_dictionary or dictionary.equals(last_dictionary)):
                names = dictionary.to_pylist()
                for code in names:
                    if code not in self.gid:
                        self.gid[code] = len(self.gid)
                to_gid = np.array([self.gid[c] for c in names], dtype=np.int32 if len(self.gid) < 2**31 else np.int64)
                last_dictionary = dictionary
            if self.count.size < len(self.gid):
                self.count = np.concatenate([self.count, np.zeros(len(self.gid) - self.count.size, np.int64)])
            np.add.at(self.count, to_gid, counts)
            if self.n_values < self.max_value_rows:
                self.value_gid.append(to_gid[value_index])
                self.values.append(vals)
                self.n_values += int(vals.size)

    def counts(self) -> dict[str, int]:
        return {c: int(self.count[i]) for c, i in self.gid.items() if self.count[i] > 0}

    def quantile_edges(self, kept: set[str], n_bins: int, min_count: int) -> dict[str, list[float]]:
        """Per kept code with >= min_count values: sorted unique inner quantiles (linear interpolation)."""
        if not self.values or n_bins < 1:
            return {}
        gid = np.concatenate(self.value_gid)
        vals = np.concatenate(self.values)
        names = np.empty(len(self.gid), dtype=object)
        for c, i in self.gid.items():
            names[i] = c
        sizes = np.bincount(gid, minlength=len(self.gid))
        wanted = np.array([sizes[i] >= min_count and names[i] in kept for i in range(len(self.gid))], dtype=bool)
        if not wanted.any():
            return {}
        if sizes[~wanted].any():
            keep_rows = wanted[gid]
            gid, vals = gid[keep_rows], vals[keep_rows]
        small = gid.astype(np.int16) if len(self.gid) < 2**15 else gid  # int16 sorts by radix, in O(n)
        vals = vals[np.argsort(small, kind="stable")]
        del gid, small
        ends = np.cumsum(np.where(wanted, sizes, 0))
        qs = np.arange(1, n_bins) / n_bins
        edges = {}
        for i in np.flatnonzero(wanted):
            # the quantiles of a group depend only on its values, not their order; sorting first (SIMD, in
            # the stored dtype) makes numpy's partition cheap
            group = np.sort(vals[ends[i] - sizes[i]: ends[i]]).astype(np.float64, copy=False)
            quantiles = np.quantile(group, qs, method="linear", overwrite_input=True)
            edges[names[i]] = sorted({float(x) for x in quantiles})
        return edges


def _buffer_and_validity(column: pa.ChunkedArray, dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """A fixed-width column's values straight from its buffer (null slots hold anything) and its
    validity as bools (None when it has no nulls)."""
    if isinstance(column, pa.ChunkedArray):
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    validity, data = array.buffers()[:2]
    offset, n = array.offset, len(array)
    values = np.frombuffer(data, dtype=dtype, count=offset + n)[offset:] if n else np.zeros(0, dtype)
    if not array.null_count:
        return values, None
    bits = np.frombuffer(validity, dtype=np.uint8, count=(offset + n + 7) // 8)
    return values, np.unpackbits(bits, bitorder="little")[offset: offset + n].view(bool)


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
