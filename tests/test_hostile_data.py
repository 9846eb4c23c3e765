"""Hostile data and output folders (issue 19): changed data is never silently reused, medscale never
writes over a user's files or into its input, partial outputs are never trusted, and what silently
changes results in the data (duplicate rows, only static rows) is reported."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import tiny_spec
from medscale.atomic import MARKER, OutDirError
from medscale.data.meds import MedsError, read_meds
from medscale.data.simulator import generate_cohort
from medscale.data.token_store import TokenWindows, tokenize_dataset
from medscale.scaling.sweep.dataset import prepare_dataset
from medscale.scaling.sweep.spec import dataset_id, parse_spec


@pytest.fixture
def meds(tmp_path, tiny_dataset) -> Path:
    """A private copy of the tiny cohort, free to damage."""
    return Path(shutil.copytree(tiny_dataset[0], tmp_path / "meds"))


def _rewrite_shards(meds: Path, change) -> None:
    for path in sorted((meds / "data").rglob("*.parquet")):
        table = change(pq.read_table(path))
        pq.write_table(table, path)


def _doubled(table: pa.Table) -> pa.Table:
    """Every row twice, still sorted by subject and time (an export that joined twice)."""
    both = pa.concat_tables([table, table])
    order = np.lexsort((np.arange(both.num_rows) % table.num_rows,))
    return both.take(pa.array(order))


def _static_only(table: pa.Table) -> pa.Table:
    return table.set_column(1, "time", pa.nulls(table.num_rows, table.schema.field("time").type))


# ---------------------------------------------------------------------------------------------
# 1. identity by content
# ---------------------------------------------------------------------------------------------

def _spec(meds: Path, **overrides):
    return parse_spec(tiny_spec(meds, **overrides))


@pytest.mark.parametrize("change", ["rewritten shard", "touched shard", "added shard", "tokenizer setting"])
def test_dataset_identity_follows_the_data_and_the_tokenizer(meds, change):
    before = dataset_id(_spec(meds))
    assert dataset_id(_spec(meds)) == before  # stable while nothing changes
    overrides = {}
    shard = meds / "data" / "train" / "0000.parquet"
    if change == "rewritten shard":
        table = pq.read_table(shard)
        pq.write_table(table.slice(0, table.num_rows - 1), shard)
    elif change == "touched shard":
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "added shard":
        shutil.copy(shard, meds / "data" / "train" / "0001.parquet")
    else:
        overrides = {"dataset.tokenizer": {"min_count": 2, "value_bins": 10}}
    assert dataset_id(_spec(meds, **overrides)) != before


def test_replaced_meds_data_is_tokenized_again_not_reused(tmp_path, meds):
    store = tmp_path / "store"
    first = prepare_dataset(_spec(meds), store, say=lambda m: None)
    _rewrite_shards(meds, _doubled)  # same path, different data
    second = prepare_dataset(_spec(meds), store, say=lambda m: None)
    assert second.token_dir != first.token_dir
    tokens = lambda p: p.manifest["splits"]["train"]["tokens"]  # noqa: E731
    assert tokens(second) > tokens(first)


# ---------------------------------------------------------------------------------------------
# 4. what silently changes results in the data
# ---------------------------------------------------------------------------------------------

def test_duplicate_event_rows_are_reported_with_counts(tmp_path, meds):
    _rewrite_shards(meds, _doubled)
    manifest_warnings = _tokenize_warnings(meds, tmp_path / "tokens")
    train = read_meds(meds).rows_of("train")[0]
    counted = [w for w in manifest_warnings if w.startswith("train: ") and f" of {train:,} rows are exact duplicates" in w]
    assert counted and int(counted[0].split()[1].replace(",", "")) >= train // 2  # at least the copies made


def test_undoctored_data_gives_no_duplicate_warning(tmp_path, meds):
    assert not [w for w in _tokenize_warnings(meds, tmp_path / "tokens") if "duplicate" in w]


def _tokenize_warnings(meds: Path, out: Path) -> list[str]:
    import json

    tokenize_dataset(meds, out, workers=1)
    return json.loads((out / "manifest.json").read_text())["warnings"]


def test_dataset_of_only_static_rows_is_refused(tmp_path, meds):
    _rewrite_shards(meds, _static_only)
    with pytest.raises(MedsError, match=r"every one of the [0-9,]+ rows of the train split is a static row"):
        tokenize_dataset(meds, tmp_path / "tokens", workers=1)
    assert not (tmp_path / "tokens" / "manifest.json").exists()


def test_dataset_of_mostly_static_rows_is_warned_about(tmp_path, meds):
    def mostly_static(table: pa.Table) -> pa.Table:
        keep_time = pc.equal(table["subject_id"], table["subject_id"][0])  # one subject keeps its events
        return table.set_column(1, "time", pc.if_else(keep_time, table["time"], pa.scalar(None, table["time"].type)))

    _rewrite_shards(meds, lambda t: _sorted_static_first(mostly_static(t)))
    assert any("timed events" in w for w in _tokenize_warnings(meds, tmp_path / "tokens"))


def _sorted_static_first(table: pa.Table) -> pa.Table:
    times = table["time"].cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()
    return table.take(pa.array(np.lexsort((times, table["subject_id"].to_numpy()))))


# ---------------------------------------------------------------------------------------------
# 3. never write into the input or over the user's files
# ---------------------------------------------------------------------------------------------

def _users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text("the user's own manifest\n")
    return path


OUT_CASES = [
    ("folder of the user's files", lambda tmp, meds: _users_folder(tmp / "mine"), r"is not empty .* not a medscale"),
    ("inside the MEDS data/ folder", lambda tmp, meds: meds / "data" / "tokens", r"inside the input dataset"),
    ("the MEDS root itself", lambda tmp, meds: meds, r"inside the input dataset"),
    ("a file", lambda tmp, meds: _file(tmp / "a_file"), r"is a file, not a folder"),
    ("another kind of medscale folder", lambda tmp, meds: _marked(tmp / "store", "store"), r"medscale store folder"),
]


def _file(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _marked(path: Path, kind: str) -> Path:
    from medscale.atomic import write_marker

    path.mkdir()
    write_marker(path, kind)
    return path


@pytest.mark.parametrize("case,make,error", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_tokenize_refuses_an_out_folder_it_must_not_write(tmp_path, meds, case, make, error):
    out = make(tmp_path, meds)
    before = _snapshot(tmp_path)
    with pytest.raises(OutDirError, match=error):
        tokenize_dataset(meds, out, workers=1)
    assert _snapshot(tmp_path) == before  # nothing written, nothing overwritten
    read_meds(meds)  # the input still validates


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_tokenize_rewrites_its_own_store_and_adopts_one_without_marker(tmp_path, meds):
    out = tmp_path / "tokens"
    tokenize_dataset(meds, out, workers=1)
    tokenize_dataset(meds, out, workers=1)  # its own: allowed
    (out / MARKER).unlink()  # a store written before markers existed
    tokenize_dataset(meds, out, workers=1)
    assert (out / MARKER).exists() and (out / "manifest.json").exists()


def test_generate_refuses_a_folder_of_the_users_files(tmp_path):
    out = _users_folder(tmp_path / "mine")
    with pytest.raises(OutDirError, match="is not empty"):
        generate_cohort(out, 5, 0, workers=1)
    assert (out / "manifest.json").read_text() == "the user's own manifest\n"


def test_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        meds = generate_cohort(tmp_path / "meds", 20, 0, workers=1)
        tokenize_dataset(meds, tmp_path / "tokens", workers=1)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), \
        {str(p): oct(p.stat().st_mode) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o644}


# ---------------------------------------------------------------------------------------------
# 5. partial outputs are never trusted; stale temporaries are cleaned
# ---------------------------------------------------------------------------------------------

def test_interrupted_tokenize_is_not_trusted_and_a_rerun_cleans_and_completes(tmp_path, meds):
    out = tmp_path / "tokens"
    tokenize_dataset(meds, out, workers=1)
    # what a kill mid-rewrite leaves: the manifest removed first, a temporary half-written
    (out / "manifest.json").unlink()
    stale = out / "train" / ".tokens.npy.abc123.tmp"
    stale.write_bytes(b"\x93NUMPY half")
    with pytest.raises(MedsError, match="incomplete token store"):
        TokenWindows(out, "train", 32)
    tokenize_dataset(meds, out, workers=1)
    assert not stale.exists() and not list(out.rglob("*.tmp"))
    assert len(TokenWindows(out, "train", 32)) > 0


def test_interrupted_generate_is_not_trusted_and_a_rerun_finishes_it(tmp_path):
    from medscale.atomic import write_marker

    out = generate_cohort(tmp_path / "meds", 20, 0, workers=1)
    reference = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")}
    write_marker(out, "cohort", complete=False)  # as a kill before the last write leaves it
    (out / "metadata" / "subject_splits.parquet").unlink()
    (out / "data" / "train" / ".0000.parquet.x1.tmp").write_bytes(b"partial")
    with pytest.raises(MedsError, match="incomplete .* Rerun the same generate command"):
        read_meds(out)
    with pytest.raises(MedsError, match="incomplete"):
        tokenize_dataset(out, tmp_path / "tokens", workers=1)
    generate_cohort(out, 20, 0, workers=1)  # the same command again
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")} == reference
    assert not list(out.rglob("*.tmp"))
    read_meds(out)


SWEEP_OUT_CASES = [
    ("folder of the user's files", lambda tmp, meds: _users_folder(tmp / "mine"), r"is not empty .* not a medscale run"),
    ("inside the MEDS input", lambda tmp, meds: meds / "runs", r"inside the input dataset"),
    ("a token store", lambda tmp, meds: _marked(tmp / "tokens", "tokens"), r"medscale tokens folder, not a run store"),
]


@pytest.mark.parametrize("case,make,error", SWEEP_OUT_CASES, ids=[c[0] for c in SWEEP_OUT_CASES])
def test_sweep_refuses_an_out_folder_it_must_not_write(tmp_path, meds, case, make, error):
    from conftest import write_spec
    from medscale.scaling.pipeline import load_spec_and_data

    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(meds))
    out = make(tmp_path, meds)
    before = _snapshot(tmp_path)
    with pytest.raises(OutDirError, match=error):
        load_spec_and_data(spec, out)
    assert _snapshot(tmp_path) == before


def test_sweep_adopts_a_run_store_written_before_markers(tmp_path, meds):
    from conftest import write_spec
    from medscale.scaling.pipeline import load_spec_and_data

    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "results.csv").write_text("run_id\n")
    load_spec_and_data(write_spec(tmp_path / "spec.yaml", tiny_spec(meds)), out)
    assert (out / MARKER).exists()
