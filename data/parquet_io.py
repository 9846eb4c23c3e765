"""Deterministic parquet writes (same content => same bytes), atomic through medscale.atomic."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medscale.atomic import write_with


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write `table` without per-run metadata (no pandas schema blob, fixed writer options)."""
    table = table.replace_schema_metadata(None)
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", compression_level=3,
                                                use_dictionary=True, write_statistics=True, row_group_size=1 << 20))
