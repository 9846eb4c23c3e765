"""Deterministic, atomic parquet and JSON writes (same content => same bytes)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _fsync_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write `table` without per-run metadata (no pandas schema blob, fixed writer options)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    table = table.replace_schema_metadata(None)
    pq.write_table(table, tmp, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True, row_group_size=1 << 20)
    _fsync_rename(tmp, path)


def write_json(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    _fsync_rename(tmp, path)
