"""read_meds: a hand-made MEDS dataset in every accepted shape, and malformed inputs with clear errors."""
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medscale.data.meds import MedsError, read_meds


def shard(rows, *, value_type=pa.float32(), time_type=pa.timestamp("us"), code_type=pa.string(), drop=None):
    """rows: (subject_id, time or None, code, value or None)."""
    cols = {
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], time_type),
        "code": pa.array([r[2] for r in rows], code_type),
        "numeric_value": pa.array([r[3] for r in rows], value_type),
    }
    if drop:
        del cols[drop]
    return pa.table(cols)


def write(root, rel, table):
    path = root / "data" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


T = datetime(2020, 1, 1)
T2 = datetime(2020, 6, 1)
GOOD = [(1, None, "GENDER//F", None), (1, datetime(1970, 1, 1), "MEDS_BIRTH", None), (1, T, "LOINC//4548-4", 6.5),
        (1, T2, "ICD10CM//E11.9", None)]


def test_hand_made_dataset_with_nested_folders_float64_static_rows_and_split_folders(tmp_path):
    write(tmp_path, "train/site_a/0.parquet", shard(GOOD, value_type=pa.float64()))
    write(tmp_path, "train/site_b/1.parquet",
          shard([(2, None, "GENDER//M", None), (2, T, "LOINC//2160-0", 1.1), (3, T, "X", None)],
                value_type=pa.float64()))
    write(tmp_path, "tuning/0.parquet", shard([(4, T, "LOINC//4548-4", 7.0)]))
    write(tmp_path, "held_out/0.parquet", shard([(5, None, "GENDER//F", None), (5, T, "Y", 2.0)]))
    ds = read_meds(tmp_path)
    assert sorted(s.name for s in ds.shards) == ["held_out/0.parquet", "train/site_a/0.parquet",
                                                 "train/site_b/1.parquet", "tuning/0.parquet"]
    assert ds.subject_splits == {1: "train", 2: "train", 3: "train", 4: "tuning", 5: "held_out"}
    assert list(ds.split_of([5, 1])) == ["held_out", "train"]
    assert ds.codes is None and ds.metadata == {}
    tables = list(ds.iter_tables("train"))
    assert [s.split for s, _ in tables] == ["train", "train"]
    first = tables[0][1]
    assert first.schema.field("numeric_value").type == pa.float64()
    assert first["time"].null_count == 1 and first["numeric_value"].to_pylist()[2] == 6.5
    assert sum(t.num_rows for _, t in ds.iter_tables()) == 10


def test_splits_file_wins_and_a_shard_may_mix_splits(tmp_path):
    write(tmp_path, "0.parquet", shard(GOOD + [(2, T, "X", None)]))
    (tmp_path / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()), "split": ["train", "held_out"]}),
                   tmp_path / "metadata" / "subject_splits.parquet")
    pq.write_table(pa.table({"code": ["X"], "description": ["an x"]}), tmp_path / "metadata" / "codes.parquet")
    ds = read_meds(tmp_path)
    assert ds.shards[0].split is None
    held = ds.read_shard(ds.shards[0], "held_out")
    assert held["subject_id"].to_pylist() == [2]
    assert ds.codes["description"].to_pylist() == ["an x"]
    assert ds.n_subjects("train") == 1


def _err(root) -> str:
    with pytest.raises(MedsError) as info:
        read_meds(root)
    return str(info.value)


def test_missing_column_names_file_column_and_rows(tmp_path):
    write(tmp_path, "train/0.parquet", shard(GOOD, drop="numeric_value"))
    msg = _err(tmp_path)
    assert "data/train/0.parquet" in msg and "'numeric_value' is missing" in msg and "4 rows" in msg


def test_mistyped_column(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(1, T, "A", 1), (1, T2, "B", 2)], value_type=pa.int64()))
    msg = _err(tmp_path)
    assert "data/train/0.parquet" in msg and "'numeric_value' has type int64" in msg and "2 rows" in msg
    assert "float32" in msg


def test_mistyped_time_column(tmp_path):
    table = shard([(1, T, "A", None)]).set_column(1, "time", pa.array(["2020-01-01"]))
    write(tmp_path, "train/0.parquet", table)
    msg = _err(tmp_path)
    assert "'time' has type string" in msg and "1 row" in msg and "timestamp[us]" in msg


def test_unsorted_times_within_a_subject(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(1, T2, "A", None), (1, T, "B", None), (1, T2, "C", None),
                                              (2, T2, "D", None), (2, T, "E", None)]))
    msg = _err(tmp_path)
    assert "data/train/0.parquet" in msg and "'time' is not sorted" in msg and "2 rows" in msg
    assert "subject_id 1" in msg and "Sort" in msg


def test_static_row_after_timed_rows(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(1, T, "A", None), (1, None, "GENDER//F", None)]))
    msg = _err(tmp_path)
    assert "static rows with null time" in msg and "1 row" in msg


def test_unsorted_subjects(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(2, T, "A", None), (1, T, "B", None)]))
    msg = _err(tmp_path)
    assert "'subject_id' is not sorted" in msg and "1 row" in msg


def test_null_codes(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(1, T, "A", None), (1, T2, None, None), (2, T, None, 1.0)]))
    msg = _err(tmp_path)
    assert "data/train/0.parquet" in msg and "'code' is null in 2 rows of 3" in msg


def test_subject_split_across_shards(tmp_path):
    write(tmp_path, "train/0.parquet", shard([(1, T, "A", None), (2, T, "A", None)]))
    write(tmp_path, "train/1.parquet", shard([(2, T2, "B", None), (3, T, "A", None)]))
    msg = _err(tmp_path)
    assert "1 subject appear in more than one shard" in msg
    assert "data/train/0.parquet" in msg and "data/train/1.parquet" in msg and "subject 2" in msg


def test_empty_dataset(tmp_path):
    write(tmp_path, "train/0.parquet", shard([]))
    assert "0 rows" in _err(tmp_path) and "empty" in _err(tmp_path)
    (tmp_path / "data" / "train" / "0.parquet").unlink()
    assert "holds no .parquet files" in _err(tmp_path)


def test_no_data_folder_and_not_a_folder(tmp_path):
    assert "has no data/ folder" in _err(tmp_path)
    assert "is not a folder" in _err(tmp_path / "nope")


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "data" / "train" / "0.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a parquet file at all" * 10)
    msg = _err(tmp_path)
    assert "data/train/0.parquet" in msg and "cannot be read as parquet" in msg and "Re-export" in msg


def test_unknown_split_name(tmp_path):
    write(tmp_path, "0.parquet", shard([(1, T, "A", None), (2, T, "A", None), (3, T, "A", None)]))
    (tmp_path / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1, 2, 3], pa.int64()), "split": ["train", "test", "test"]}),
                   tmp_path / "metadata" / "subject_splits.parquet")
    msg = _err(tmp_path)
    assert "metadata/subject_splits.parquet" in msg and "'split'" in msg and "'test'" in msg and "2 rows" in msg


def test_shard_outside_split_folders_without_splits_file(tmp_path):
    write(tmp_path, "shards/0.parquet", shard([(1, T, "A", None)]))
    msg = _err(tmp_path)
    assert "data/shards/0.parquet" in msg and "subject_splits.parquet" in msg and "train/" in msg


def test_subject_missing_from_splits_file(tmp_path):
    write(tmp_path, "0.parquet", shard([(1, T, "A", None), (7, T, "A", None)]))
    (tmp_path / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()), "split": ["train"]}),
                   tmp_path / "metadata" / "subject_splits.parquet")
    msg = _err(tmp_path)
    assert "1 subject(s)" in msg and "subject 7" in msg and "data/0.parquet" in msg


def test_meds_error_is_caught_as_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="has no data/ folder"):
        read_meds(tmp_path)
