"""MEDS v0.4 reading and validation: `read_meds(root) -> MedsDataset`, errors as `MedsError`.

Accepted: shards anywhere under `data/` (nested folders), `numeric_value` float32 or float64,
integer `subject_id` of any width, timestamps of any unit (read as microseconds), static rows with
null `time`, extra columns (ignored). Splits come from `metadata/subject_splits.parquet`, or, when it
is absent, from the first folder under `data/` (`train`, `tuning`, `held_out`). `metadata/codes.parquet`
and `metadata/dataset.json` are optional.

Validation reads the schema, the parquet statistics and the subject_id and time columns of every
shard (never the code strings), so it costs a fraction of a full scan; with `keep`, it reads the
columns a caller needs next instead and hands them over, so tokenization reads each shard once.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MEDS_VERSION = "0.4"
SPLITS = ("train", "tuning", "held_out")
REQUIRED_COLUMNS = ("subject_id", "time", "code", "numeric_value")
EXPECTED_TYPES = {"subject_id": "int64", "time": "timestamp[us]", "code": "string",
                  "numeric_value": "float32 (or float64)"}


class MedsError(ValueError):
    """A MEDS dataset that cannot be used as given; the message says where, what and what to do."""


FOOTER_MAX_BYTES = 1 << 20  # a parquet footer larger than this is hashed by its last MiB


def _footer_hash(path: Path, size: int) -> str:
    """sha256 of a parquet file's footer (schema, row groups, column statistics and offsets): it changes
    with the data. Files that are not parquet are hashed by their last MiB."""
    with open(path, "rb") as f:
        tail = min(size, 8)
        f.seek(size - tail)
        end = f.read(tail)
        n = int.from_bytes(end[:4], "little") + 8 if len(end) == 8 and end[4:] == b"PAR1" else FOOTER_MAX_BYTES
        n = min(n, size, FOOTER_MAX_BYTES)
        f.seek(size - n)
        return hashlib.sha256(f.read(n)).hexdigest()


def meds_fingerprint(root) -> str:
    """A fingerprint of the MEDS dataset at `root` as it is now: every file under data/ and metadata/
    (path, size, modification time, footer hash). Reads a few KiB per file."""
    root = Path(root)
    entries = []
    for folder in ("data", "metadata"):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")):
            st = path.stat()
            entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns,
                            _footer_hash(path, st.st_size) if st.st_size else ""))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _refuse_incomplete_cohort(root: Path) -> None:
    """A cohort `generate` was still writing (killed, or running) is never read as a dataset."""
    try:
        body = json.loads((root / ".medscale-store.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(body, dict) and body.get("kind") == "cohort" and not body.get("complete"):
        raise MedsError(f"{root}: this synthetic cohort is incomplete (`medscale generate` was interrupted or is "
                        "still running). Rerun the same generate command to finish it.")


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _type_ok(column: str, typ: pa.DataType) -> bool:
    if column == "subject_id":
        return pa.types.is_integer(typ)
    if column == "time":
        return pa.types.is_timestamp(typ)
    if column == "code":
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        return pa.types.is_string(typ) or pa.types.is_large_string(typ)
    if column == "numeric_value":
        return pa.types.is_float32(typ) or pa.types.is_float64(typ) or pa.types.is_null(typ)
    return True


@dataclass(frozen=True)
class Shard:
    path: Path
    name: str                 # path relative to data/, e.g. 'train/0.parquet'
    split: str | None         # the one split of all its subjects, or None when it mixes splits
    n_rows: int
    n_subjects: int
    n_static: int = 0         # rows with null time (static rows)


@dataclass
class MedsDataset:
    root: Path
    shards: list[Shard]
    subject_ids: np.ndarray          # sorted int64, every subject in the data
    subject_split_codes: np.ndarray  # index into SPLITS, aligned with subject_ids
    codes: pa.Table | None = None    # metadata/codes.parquet if present
    metadata: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict, repr=False)  # shard path -> table read while validating (`keep`)

    def splits(self) -> list[str]:
        present = np.unique(self.subject_split_codes)
        return [SPLITS[i] for i in present]

    def split_of(self, subject_ids) -> np.ndarray:
        """Split name of each subject id (vectorized)."""
        ids = np.asarray(subject_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.subject_ids, ids), 0, self.subject_ids.size - 1)
        if not np.all(self.subject_ids[pos] == ids):
            missing = ids[self.subject_ids[pos] != ids]
            raise KeyError(f"subject {missing[0]} is not in {self.root}")
        return np.array(SPLITS, dtype=object)[self.subject_split_codes[pos]]

    @property
    def subject_splits(self) -> dict[int, str]:
        """subject_id -> split (a Python dict; use split_of for many subjects)."""
        return dict(zip(self.subject_ids.tolist(), (SPLITS[i] for i in self.subject_split_codes)))

    def rows_of(self, split: str) -> tuple[int, int]:
        """(rows, static rows) of the shards holding `split` (a mixed shard counts whole: an upper bound)."""
        shards = self.shards_of(split)
        return sum(s.n_rows for s in shards), sum(s.n_static for s in shards)

    def n_subjects(self, split: str | None = None) -> int:
        if split is None:
            return int(self.subject_ids.size)
        return int((self.subject_split_codes == SPLITS.index(split)).sum())

    def shards_of(self, split: str) -> list[Shard]:
        if split not in SPLITS:
            raise MedsError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}.")
        return [s for s in self.shards if s.split in (split, None)]

    def read_shard(self, shard: Shard, split: str | None = None, columns=REQUIRED_COLUMNS) -> pa.Table:
        """One shard as (subject_id int64, time timestamp[us], code string, numeric_value float64), rows of `split`."""
        table = pq.read_table(shard.path, columns=list(columns))
        table = _normalize(table)
        if split is not None and shard.split is None:
            mask = np.asarray(self.split_of(table["subject_id"].to_numpy()) == split)
            table = table.filter(pa.array(mask))
        return table

    def iter_tables(self, split: str | None = None) -> Iterator[tuple[Shard, pa.Table]]:
        shards = self.shards if split is None else self.shards_of(split)
        for shard in shards:
            yield shard, self.read_shard(shard, split)


def _normalize(table: pa.Table) -> pa.Table:
    cols = {}
    for name in table.column_names:
        col = table[name]
        if name == "subject_id":
            col = col.cast(pa.int64())
        elif name == "time":
            col = col.cast(pa.timestamp("us"))
        elif name == "code":
            col = col.cast(pa.string())
        elif name == "numeric_value":
            col = col.cast(pa.float64())
        cols[name] = col
    return pa.table(cols)


def _check_schema(path: Path, rel: str) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise MedsError(f"data/{rel}: cannot be read as parquet ({type(err).__name__}: {err}). "
                        "Re-export this shard, or move it out of data/.") from None
    n = pf.metadata.num_rows
    for column in REQUIRED_COLUMNS:
        if column not in schema.names:
            raise MedsError(f"data/{rel}: column '{column}' is missing ({_rows(n)}; columns present: "
                            f"{', '.join(schema.names)}). Every MEDS shard needs {', '.join(REQUIRED_COLUMNS)}; "
                            f"add '{column}' ({EXPECTED_TYPES[column]}) or rename the column that holds it.")
        typ = schema.field(column).type
        if not _type_ok(column, typ):
            raise MedsError(f"data/{rel}: column '{column}' has type {typ} in all {_rows(n)}, expected "
                            f"{EXPECTED_TYPES[column]}. Cast it when writing the shard.")
    return pf


def _null_count(pf: pq.ParquetFile, path: Path, column: str) -> int:
    idx = pf.schema_arrow.get_field_index(column)
    total = 0
    md = pf.metadata
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(idx).statistics
        if stats is None or not stats.has_null_count:
            return int(pq.read_table(path, columns=[column])[column].null_count)
        total += stats.null_count
    return int(total)


def _int64_buffer(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """An int64-castable column as it lies in arrow's buffer (zero-copy for one chunk; null slots hold
    anything) and its validity (None when it has no nulls)."""
    column = column.cast(pa.int64())
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    validity, data = array.buffers()[:2]
    offset, n = array.offset, len(array)
    if not n:
        return np.zeros(0, np.int64), None
    values = np.frombuffer(data, dtype=np.int64, count=offset + n)[offset:]
    if not array.null_count:
        return values, None
    bits = np.frombuffer(validity, dtype=np.uint8, count=(offset + n + 7) // 8)
    return values, np.unpackbits(bits, bitorder="little")[offset: offset + n].view(bool)


def _check_rows(path: Path, rel: str, pf: pq.ParquetFile, table: pa.Table | None = None) -> np.ndarray:
    """Row-level checks (on `table` when the shard was already read); returns the shard's unique subject ids."""
    n = pf.metadata.num_rows
    nulls = _null_count(pf, path, "code")
    if nulls:
        raise MedsError(f"data/{rel}: column 'code' is null in {_rows(nulls)} of {n:,}. Every event needs a code; "
                        "drop those rows or give them a code.")
    if table is None:
        table = pq.read_table(path, columns=["subject_id", "time"])
    sid_col = table["subject_id"]
    if sid_col.null_count:
        raise MedsError(f"data/{rel}: column 'subject_id' is null in {_rows(sid_col.null_count)} of {n:,}. "
                        "Every row must belong to a subject; drop those rows.")
    sid, _ = _int64_buffer(sid_col)
    down = sid[1:] < sid[:-1]
    if down.any():
        raise MedsError(f"data/{rel}: column 'subject_id' is not sorted: {_rows(int(down.sum()))} come after a larger "
                        f"subject_id (first at row {int(np.argmax(down)) + 1:,}). Sort each shard by subject_id, "
                        "then time.")
    del down
    # times in microseconds with null (static) rows as the smallest int64; compared on the buffer, then
    # the few pairs that touch a null row are redone
    t, valid = _int64_buffer(table["time"].cast(pa.timestamp("us")))
    same = sid[1:] == sid[:-1]
    back = t[1:] < t[:-1]
    if valid is not None:
        lowest = np.iinfo(np.int64).min
        pairs = np.flatnonzero(~valid)
        pairs = np.unique(np.concatenate([pairs - 1, pairs]))
        pairs = pairs[(pairs >= 0) & (pairs < sid.size - 1)]
        back[pairs] = (np.where(valid[pairs + 1], t[pairs + 1], lowest) < np.where(valid[pairs], t[pairs], lowest))
    back &= same
    if back.any():
        if valid is not None:
            t = np.where(valid, t, np.iinfo(np.int64).min)
        first = int(np.argmax(back)) + 1
        static_late = int((back & (t[1:] == np.iinfo(np.int64).min)).sum())
        hint = (f" ({_rows(static_late)} are static rows with null time after timed rows; put them first)"
                if static_late else "")
        raise MedsError(f"data/{rel}: column 'time' is not sorted within subjects: {_rows(int(back.sum()))} are "
                        f"earlier than the row before them{hint}, first at row {first:,} (subject_id {sid[first]}). "
                        "Sort each shard by subject_id, then time, with null-time (static) rows first.")
    starts = np.empty(sid.size, dtype=bool)
    starts[:1] = True
    np.logical_not(same, out=starts[1:])
    return sid[starts]  # sorted, so the unique ids are the run starts


def _read_splits_table(root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = root / "metadata" / "subject_splits.parquet"
    if not path.exists():
        return None
    rel = "metadata/subject_splits.parquet"
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise MedsError(f"{rel}: cannot be read as parquet ({type(err).__name__}: {err}). Rewrite it, or delete it "
                        "to take splits from the data/ folder names.") from None
    for column, check in (("subject_id", pa.types.is_integer), ("split", lambda t: pa.types.is_string(t)
                                                                    or pa.types.is_large_string(t)
                                                                    or pa.types.is_dictionary(t))):
        if column not in table.column_names:
            raise MedsError(f"{rel}: column '{column}' is missing ({_rows(table.num_rows)}). It needs subject_id "
                            "(int64) and split (string).")
        if not check(table.schema.field(column).type):
            raise MedsError(f"{rel}: column '{column}' has type {table.schema.field(column).type}, expected "
                            f"{'int64' if column == 'subject_id' else 'string'}.")
    split = table["split"].cast(pa.string()).to_numpy(zero_copy_only=False)
    sid = table["subject_id"].cast(pa.int64()).to_numpy()
    unknown = ~np.isin(split, SPLITS)
    if unknown.any():
        names = sorted({str(s) for s in split[unknown]})
        raise MedsError(f"{rel}: column 'split' has unknown split name(s) {', '.join(map(repr, names))} in "
                        f"{_rows(int(unknown.sum()))}. Use train, tuning or held_out.")
    codes = np.array([SPLITS.index(s) for s in split], dtype=np.int8) if split.size else np.zeros(0, np.int8)
    order = np.argsort(sid, kind="stable")
    sid, codes = sid[order], codes[order]
    dup = sid[1:] == sid[:-1]
    if dup.any():
        raise MedsError(f"{rel}: column 'subject_id' repeats {_rows(int(dup.sum()))} (e.g. subject {sid[1:][dup][0]}). "
                        "Give each subject exactly one split.")
    return sid, codes


def _read_kept(path: Path, columns: list[str]) -> pa.Table | None:
    """`columns` of a shard, codes dictionary-encoded; None when it cannot be read that way (the checks
    then read it themselves and report why)."""
    try:
        table = pq.read_table(path, columns=columns, read_dictionary=["code"] if "code" in columns else None)
    except Exception:  # noqa: BLE001 - reported, in file order, by _check_schema / _check_rows
        return None
    for i, name in enumerate(table.column_names):  # one chunk each, so later numpy views are zero-copy
        if name != "code" and table[name].num_chunks > 1:
            table = table.set_column(i, name, table[name].combine_chunks())
    return table


def _kept_paths(files: list[Path], max_rows: int) -> set[Path]:
    """The first shards holding at most `max_rows` rows in all (by their parquet footers)."""
    kept, total = set(), 0
    for path in files:
        try:
            n = pq.read_metadata(path).num_rows
        except Exception:  # noqa: BLE001 - _check_schema reports it
            break
        if total + n > max_rows:
            break
        kept.add(path)
        total += n
    return kept


def read_meds(root, *, keep: list[str] | tuple[str, ...] | None = None, keep_max_rows: int = 0,
              workers: int = 1) -> MedsDataset:
    """Find, check and describe a MEDS dataset at `root` (the folder holding data/ and metadata/).

    With `keep` (column names, subject_id and time among them), the row checks read those columns
    of each shard instead of only subject_id and time (in `workers` background threads, ahead of
    the checks), and the dataset holds them in `tables` (path -> table, codes dictionary-encoded)
    for the first shards up to `keep_max_rows` rows in all: a caller that reads every shard next
    (tokenization) reads each shard once. The checks and their errors are the same either way.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedsError(f"{root} is not a folder: pass the root of a MEDS dataset (the folder holding data/).")
    _refuse_incomplete_cohort(root)
    data = root / "data"
    if not data.is_dir():
        raise MedsError(f"{root} has no data/ folder: a MEDS dataset keeps its parquet shards under <root>/data/. "
                        "Point at the dataset root, not at data/ itself.")
    files = sorted(p for p in data.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise MedsError(f"{data} holds no .parquet files: the dataset is empty. Write at least one shard "
                        "(data/<split>/<n>.parquet).")
    if keep and not {"subject_id", "time"} <= set(keep):
        raise ValueError(f"keep must include subject_id and time (the row checks read them), got {list(keep)}")
    shard_info = []
    kept = _kept_paths(files, keep_max_rows) if keep else set()
    tables: dict[Path, pa.Table] = {}
    workers = max(1, int(workers))
    with ThreadPoolExecutor(workers) as pool:
        pending = {}
        reads = iter([p for p in files if p in kept])
        for path in itertools.islice(reads, workers + 1):
            pending[path] = pool.submit(_read_kept, path, list(keep))
        for path in files:
            rel = path.relative_to(data).as_posix()
            table = pending.pop(path).result() if path in pending else None
            nxt = next(reads, None)
            if nxt is not None:
                pending[nxt] = pool.submit(_read_kept, nxt, list(keep))
            pf = _check_schema(path, rel)
            subjects = _check_rows(path, rel, pf, table) if pf.metadata.num_rows else np.zeros(0, np.int64)
            n_static = _null_count(pf, path, "time") if pf.metadata.num_rows else 0
            shard_info.append((path, rel, pf.metadata.num_rows, subjects, n_static))
            if table is not None:
                tables[path] = table
        for future in pending.values():
            future.cancel()
    if sum(info[2] for info in shard_info) == 0:
        raise MedsError(f"{data}: all {len(files)} parquet file(s) have 0 rows: the dataset is empty.")

    all_ids = np.concatenate([info[3] for info in shard_info])
    owner = np.concatenate([np.full(info[3].size, i) for i, info in enumerate(shard_info)])
    order = np.argsort(all_ids, kind="stable")
    all_ids, owner = all_ids[order], owner[order]
    dup = np.nonzero(all_ids[1:] == all_ids[:-1])[0]
    if dup.size:
        a, b = shard_info[owner[dup[0]]][1], shard_info[owner[dup[0] + 1]][1]
        raise MedsError(f"{_rows(dup.size).replace('row', 'subject')} appear in more than one shard (column "
                        f"'subject_id'), e.g. subject {all_ids[dup[0]]} in data/{a} and data/{b}. Each subject's events "
                        "must live in one shard: regroup the shards by subject_id.")

    table = _read_splits_table(root)
    if table is not None:
        split_ids, split_codes = table
        pos = np.clip(np.searchsorted(split_ids, all_ids), 0, max(split_ids.size - 1, 0))
        known = (split_ids.size > 0) & (split_ids[pos] == all_ids) if split_ids.size else np.zeros(all_ids.size, bool)
        if not known.all():
            first = shard_info[owner[np.argmin(known)]][1]
            raise MedsError(f"metadata/subject_splits.parquet: {int((~known).sum()):,} subject(s) of data/ have no "
                            f"split (column 'subject_id'; e.g. subject {all_ids[~known][0]} in data/{first}). Add them "
                            "to subject_splits.parquet, or delete it to take splits from folder names.")
        subject_codes = split_codes[pos]
    else:
        folder_split = []
        for _, rel, _, _, _ in shard_info:
            top = rel.split("/")[0] if "/" in rel else None
            if top not in SPLITS:
                raise MedsError(f"data/{rel}: no metadata/subject_splits.parquet and the shard is not in a split "
                                f"folder (train/, tuning/ or held_out/; found {top or 'data/ itself'}). Move shards "
                                "into data/<split>/ or write metadata/subject_splits.parquet (subject_id, split).")
            folder_split.append(SPLITS.index(top))
        subject_codes = np.array(folder_split, dtype=np.int8)[owner] if owner.size else np.zeros(0, np.int8)

    shards = []
    for i, (path, rel, n_rows, subjects, n_static) in enumerate(shard_info):
        codes_here = np.unique(subject_codes[owner == i])
        split = SPLITS[codes_here[0]] if codes_here.size == 1 else None
        shards.append(Shard(path, rel, split, int(n_rows), int(subjects.size), int(n_static)))
    codes = None
    codes_path = root / "metadata" / "codes.parquet"
    if codes_path.exists():
        try:
            codes = pq.read_table(codes_path)
        except Exception as err:
            raise MedsError(f"metadata/codes.parquet: cannot be read as parquet ({type(err).__name__}). Rewrite or "
                            "delete it (it is optional).") from None
        if "code" not in codes.column_names:
            raise MedsError(f"metadata/codes.parquet: column 'code' is missing ({_rows(codes.num_rows)}). Add it or "
                            "delete the file (it is optional).")
    metadata = {}
    meta_path = root / "metadata" / "dataset.json"
    if meta_path.exists():
        try:
            metadata = json.loads(meta_path.read_text())
        except ValueError as err:
            raise MedsError(f"metadata/dataset.json: not valid JSON ({err}). Fix or delete it (it is optional).") from None
    return MedsDataset(root, shards, all_ids, subject_codes.astype(np.int8), codes, metadata, tables)
