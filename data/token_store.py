"""Token shards on disk: `tokenize_dataset` writes them, `TokenWindows` reads fixed-length windows.

    out_dir/tokenizer/tokenizer.json
    out_dir/<split>/tokens.npy       int32, every subject of the split as BOS prefix events EOS, packed
    out_dir/<split>/index.parquet    subject_id, offset, length
    out_dir/manifest.json            vocab_size, token and event counts, tokens per subject, config (written last)
    out_dir/.medscale-store.json     marks the folder as a token store (medscale writes only into its own)

Every file is written to a temporary name and renamed, and manifest.json is written last (and removed
first when a store is rewritten), so a folder with a manifest is complete; readers refuse one without.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscale.data.meds import SPLITS, MedsError, read_meds
from medscale.atomic import MARKER, claim_dir, commit, naming, remove_stale_temporaries, temporary_path, write_json
from medscale.data.parquet_io import write_parquet
from medscale.data.tokenizer import Tokenizer, TokenizerConfig, _CodeCounter

NPY_HEADER_BYTES = 128
Progress = Callable[[int, int], None]
MANIFEST = "manifest.json"
FEW_DYNAMIC = 0.05  # warn when fewer than this share of a split's rows are timed events
MANY_DUPLICATES = 0.01  # warn when more than this share of a split's rows repeat an earlier row exactly


def _is_token_store(path: Path) -> bool:
    """A token folder written before the marker existed: adopt it."""
    names = {p.name for p in path.iterdir()} - {MARKER}
    return (path / "tokenizer").is_dir() and names <= {MANIFEST, "tokenizer", *SPLITS}


def _npy_header(n: int) -> bytes:
    """A version-1.0 .npy header for a 1-D little-endian int32 array of length n, exactly 128 bytes."""
    body = f"{{'descr': '<i4', 'fortran_order': False, 'shape': ({n},), }}".encode("latin1")
    pad = NPY_HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"token stream too long for the header: {n}")
    body = body + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class _StreamWriter:
    """Appends int32 chunks to `<path>.tmp`, then fixes the header and renames to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temporary_path(path)
        self.f = open(self.tmp, "wb")
        self.f.write(_npy_header(0))
        self.n = 0

    def append(self, chunk: np.ndarray) -> None:
        with naming(self.path):
            self.f.write(memoryview(np.ascontiguousarray(chunk, dtype="<i4")).cast("B"))
        self.n += chunk.size

    def close(self) -> None:
        with naming(self.path):
            self.f.seek(0)
            self.f.write(_npy_header(self.n))
            self.f.close()
            commit(self.tmp, self.path)


def bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items in threads, results in order, at most 2*workers in flight (bounded memory).

    Threads suffice: reading parquet and the numpy work of encoding release the GIL.
    """
    items = iter(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


COLUMNS = ["subject_id", "time", "code", "numeric_value"]
# shards read while validating are kept in memory (about 25 bytes a row) for the fit and the encoding,
# so each is read once; beyond this many rows the remaining shards are read again when needed
KEEP_MAX_ROWS = 60_000_000


def _read_shard(path: str, keep_subjects: np.ndarray | None, columns: list[str],
                table: pa.Table | None = None) -> pa.Table:
    if table is None:
        table = pq.read_table(path, columns=columns, read_dictionary=["code"])
    if keep_subjects is not None:
        sid = table["subject_id"].cast(pa.int64()).to_numpy()
        table = table.filter(pa.array(np.isin(sid, keep_subjects)))
    return table


def _fit(ds, config: TokenizerConfig, descriptions: dict, workers: int) -> Tokenizer:
    """Fit on the train split: the per-row counting runs in worker threads (one shard each), the
    merge in shard order, exactly as `Tokenizer.fit` over the train tables."""
    train_ids = ds.subject_ids[ds.subject_split_codes == SPLITS.index("train")]

    def summarize(shard) -> list:
        table = _read_shard(str(shard.path), None if shard.split == "train" else train_ids,
                            ["subject_id", "code", "numeric_value"], ds.tables.get(shard.path))
        return _CodeCounter.summarize(table)

    counter = _CodeCounter(config.fit_max_value_rows)
    for parts in bounded_map(summarize, ds.shards_of("train"), workers):
        counter.merge(parts)
    return Tokenizer.from_counter(counter, config, descriptions)


def tokenize_dataset(meds_dir, out_dir, config: TokenizerConfig = TokenizerConfig(), *,
                     workers: int | None = None, progress: Progress | None = None) -> Path:
    """Validate `meds_dir`, fit the tokenizer on its train split, write token shards to `out_dir`.

    Each shard is read once (while validating; see KEEP_MAX_ROWS), then the fit and the encoding run
    over the tables in memory, `workers` threads at a time.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    out = Path(out_dir)
    if not (Path(meds_dir) / "data").is_dir():
        read_meds(meds_dir)  # raises its message about the input before any output folder is made
    claim_dir(out, "tokens", adopt=_is_token_store, inputs=(meds_dir,))  # before reading: refuse early
    ds = read_meds(meds_dir, keep=COLUMNS, keep_max_rows=KEEP_MAX_ROWS, workers=workers)
    if ds.n_subjects("train") == 0:
        raise MedsError(f"{meds_dir}: the train split is empty, so there is nothing to fit the tokenizer on. "
                        "Assign subjects to 'train' in metadata/subject_splits.parquet or data/train/.")
    rows, static = ds.rows_of("train")
    if rows == static:
        raise MedsError(f"{meds_dir}: every one of the {rows:,} rows of the train split is a static row (null "
                        "'time'): there are no events to model, so training would only memorise the static codes. "
                        "Check the export: timed events are missing.")
    (out / MANIFEST).unlink(missing_ok=True)  # the store is incomplete from here until the new manifest
    remove_stale_temporaries(out)
    descriptions = {}
    if ds.codes is not None and "description" in ds.codes.column_names:
        descriptions = {c: d for c, d in zip(ds.codes["code"].to_pylist(), ds.codes["description"].to_pylist())
                        if c is not None and d is not None}
    tokenizer = _fit(ds, config, descriptions, workers)
    tokenizer.save(out / "tokenizer")

    jobs = []
    for split in ds.splits():
        split_ids = ds.subject_ids[ds.subject_split_codes == SPLITS.index(split)]
        for shard in ds.shards_of(split):
            jobs.append((split, shard.path, None if shard.split == split else split_ids))
    total = len(jobs)
    if progress:
        progress(0, total)
    last_use = {path: i for i, (_, path, _) in enumerate(jobs)}

    def with_tables():  # runs in this thread, in job order: hand each kept table over, drop it after its last job
        for i, (_, path, keep) in enumerate(jobs):
            table = ds.tables.pop(path, None) if last_use[path] == i else ds.tables.get(path)
            yield str(path), keep, table

    row_counts: dict[str, dict[str, int]] = {}

    def encode(job):
        table = _read_shard(job[0], job[1], COLUMNS, job[2])
        return tokenizer.encode_table(table), _row_counts(table)

    def counted(results):  # in job order, in this thread
        for (split, _, _), (encoded, counts) in zip(jobs, results):
            into = row_counts.setdefault(split, {"rows": 0, "static_rows": 0, "duplicate_rows": 0})
            for key, value in counts.items():
                into[key] += value
            yield encoded

    results = counted(bounded_map(encode, with_tables(), workers))
    stats = _write_splits(out, jobs, results, progress, total, tokenizer)
    for split, counts in row_counts.items():
        stats[split].update(counts)
    write_json(out / MANIFEST, {"format_version": 1, "vocab_size": tokenizer.vocab_size, "splits": stats,
                "config": asdict(tokenizer.config), "meds_dir": str(Path(meds_dir).resolve()),
                "n_codes": len(tokenizer.codes), "n_binned_codes": len(tokenizer.value_edges),
                "warnings": data_warnings(row_counts)})
    return out


def _row_counts(table: pa.Table) -> dict[str, int]:
    """Rows, static rows (null time) and exact duplicate rows (same subject, time, code and value as an
    earlier row) of one shard's table."""
    n = table.num_rows
    if not n:
        return {"rows": 0, "static_rows": 0, "duplicate_rows": 0}
    code = table["code"]
    if pa.types.is_dictionary(code.type):
        code = code.cast(pa.string())
    keyed = pa.table({"s": table["subject_id"], "t": table["time"].cast(pa.int64()), "c": code,
                      "v": table["numeric_value"].cast(pa.float64())})
    groups = keyed.group_by(["s", "t", "c", "v"]).aggregate([]).num_rows
    return {"rows": n, "static_rows": int(table["time"].null_count), "duplicate_rows": n - groups}


def data_warnings(row_counts: dict[str, dict[str, int]]) -> list[str]:
    """What in the data silently changes results, in words with counts."""
    warnings = []
    for split, c in row_counts.items():
        if c["duplicate_rows"] > MANY_DUPLICATES * c["rows"]:
            warnings.append(f"{split}: {c['duplicate_rows']:,} of {c['rows']:,} rows are exact duplicates of another "
                            "row (same subject_id, time, code, numeric_value); they are tokenized as repeated "
                            "events. Deduplicate the export if they are not real repeats.")
        dynamic = c["rows"] - c["static_rows"]
        if c["rows"] and dynamic < FEW_DYNAMIC * c["rows"]:
            warnings.append(f"{split}: only {dynamic:,} of {c['rows']:,} rows are timed events (the rest are static, "
                            "null time): a model of this split learns little beyond the static codes.")
    return warnings


def _write_splits(out: Path, jobs, results, progress, total, tokenizer: Tokenizer) -> dict:
    writers: dict[str, _StreamWriter] = {}
    events: dict[str, int] = {}
    index: dict[str, list] = {}
    for done, ((split, _, _), (tokens, subjects, lengths)) in enumerate(zip(jobs, results), start=1):
        if split not in writers:
            (out / split).mkdir(parents=True, exist_ok=True)
            writers[split] = _StreamWriter(out / split / "tokens.npy")
            index[split] = []
        w = writers[split]
        offsets = w.n + np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else np.zeros(0, np.int64)
        index[split].append((subjects, offsets, lengths))
        w.append(tokens)
        events[split] = events.get(split, 0) + int(np.count_nonzero(tokenizer.is_event_token(tokens)))
        if progress:
            progress(done, total)
    stats = {}
    for split, w in writers.items():
        w.close()
        subjects = np.concatenate([s for s, _, _ in index[split]])
        lengths = np.concatenate([n for _, _, n in index[split]]).astype(np.int64)
        write_parquet(pa.table({"subject_id": pa.array(subjects, pa.int64()),
                                "offset": pa.array(np.concatenate([o for _, o, _ in index[split]]), pa.int64()),
                                "length": pa.array(lengths, pa.int64())}), out / split / "index.parquet")
        stats[split] = {"tokens": int(w.n), "subjects": int(subjects.size), "events": events[split],
                        "events_per_token": events[split] / w.n if w.n else 0.0,
                        "tokens_per_subject_mean": float(lengths.mean()) if lengths.size else 0.0,
                        "tokens_per_subject_median": float(np.median(lengths)) if lengths.size else 0.0}
    return stats


def events_per_token(token_dir, split: str = "train") -> float | None:
    """Events (codes, one per MEDS row kept) per token of a split, from the manifest: converts tokens seen
    into events seen, so laws fitted across tokenizations compare in the same unit. None for token folders
    written before events were counted."""
    import json

    stats = json.loads((Path(token_dir) / "manifest.json").read_text()).get("splits", {}).get(split, {})
    return stats.get("events_per_token")


class TokenWindows:
    """Fixed windows over a split's packed token stream: window i is tokens[i*L : i*L + L + 1].

    `w[i]` -> {'tokens': int32[L+1], 'segment_ids': int32[L+1]}; segment ids number the subjects
    inside the window from 0, so attention can be kept within one subject. Memory-mapped; picklable
    (reopens the files by path).
    """

    def __init__(self, token_dir, split: str, seq_len: int) -> None:
        self.token_dir, self.split, self.seq_len = Path(token_dir), split, int(seq_len)
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        folder = self.token_dir / split
        if self.token_dir.is_dir() and not (self.token_dir / MANIFEST).is_file():
            raise MedsError(f"{self.token_dir} is an incomplete token store (no {MANIFEST}: tokenizing was "
                            "interrupted or is still running). Rerun `medscale tokenize` with the same --out.")
        if not (folder / "tokens.npy").is_file():
            have = sorted(p.name for p in self.token_dir.iterdir() if (p / "tokens.npy").is_file()) \
                if self.token_dir.is_dir() else []
            raise MedsError(f"{self.token_dir} has no tokens for split {split!r} (splits present: "
                            f"{', '.join(have) or 'none'}). Run tokenize_dataset on a dataset with that split.")
        self._open()

    def _open(self) -> None:
        folder = self.token_dir / self.split
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        self.offsets = pq.read_table(folder / "index.parquet", columns=["offset"])["offset"].to_numpy()

    def __getstate__(self):
        return {"token_dir": self.token_dir, "split": self.split, "seq_len": self.seq_len}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return max(0, (self.tokens.shape[0] - 1) // self.seq_len)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        i = int(i) % n
        start = i * self.seq_len
        tokens = np.array(self.tokens[start:start + self.seq_len + 1], dtype=np.int32)
        positions = np.arange(start, start + self.seq_len + 1)
        subject = np.searchsorted(self.offsets, positions, side="right") - 1
        return {"tokens": tokens, "segment_ids": (subject - subject[0]).astype(np.int32)}
