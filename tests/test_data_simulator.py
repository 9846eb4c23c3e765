"""The synthetic cohort: determinism, MEDS layout, scale of the vocabulary, clinical structure."""
import hashlib
import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from medscale.data.meds import read_meds
from medscale.data.simulator import generate_cohort


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "meds"
    calls = []
    generate_cohort(root, 1200, 11, n_shards=2, workers=1, progress=lambda d, t: calls.append((d, t)))
    return root, calls


@pytest.fixture(scope="module")
def events(cohort):
    return pl.read_parquet(str(cohort[0] / "data" / "**" / "*.parquet"))


def test_same_seed_same_bytes_whatever_the_workers_and_other_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", 300, 5, n_shards=2, workers=1)
    b = generate_cohort(tmp_path / "b", 300, 5, n_shards=2, workers=2)
    c = generate_cohort(tmp_path / "c", 300, 6, n_shards=2, workers=1)
    da, db, dc = digests(a), digests(b), digests(c)
    assert da == db
    assert set(da) == set(dc)
    assert da["data/train/0000.parquet"] != dc["data/train/0000.parquet"]
    assert len(da) >= 10


def test_output_folder_must_be_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        generate_cohort(tmp_path / "x", 10, 0, workers=1)


def test_progress_reaches_the_total(cohort):
    _, calls = cohort
    assert calls[0] == (0, 1200) and calls[-1] == (1200, 1200)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_meds_schema_and_metadata(cohort):
    root, _ = cohort
    for path in (root / "data").rglob("*.parquet"):
        schema = pq.read_schema(path)
        assert [(f.name, str(f.type)) for f in schema] == [
            ("subject_id", "int64"), ("time", "timestamp[us]"), ("code", "string"), ("numeric_value", "float")]
        assert schema.metadata is None
    ds = read_meds(root)  # validates sorting, static rows first, one shard per subject
    assert ds.n_subjects() == 1200 and set(ds.splits()) == {"train", "tuning", "held_out"}
    assert 0.7 < ds.n_subjects("train") / 1200 < 0.9
    meta = json.loads((root / "metadata" / "dataset.json").read_text())
    assert meta["meds_version"] == "0.4" and meta["dataset_name"] and meta["etl_name"]
    assert "created_at" not in meta
    codes = pq.read_table(root / "metadata" / "codes.parquet")
    assert codes.column_names == ["code", "description", "parent_codes"]
    assert dict(zip(codes["code"].to_pylist(), codes["parent_codes"].to_pylist()))["ICD10CM//E11.9"] == ["ICD10CM//E11"]


def test_static_rows_and_demographics(events):
    per_subject = events.group_by("subject_id").agg(
        (pl.col("time").is_null() & pl.col("code").str.starts_with("GENDER//")).sum().alias("sex"),
        (pl.col("code") == "MEDS_BIRTH").sum().alias("birth"),
        (pl.col("code") == "MEDS_DEATH").sum().alias("death"))
    assert (per_subject["sex"] == 1).all() and (per_subject["birth"] == 1).all()
    assert per_subject["death"].max() == 1 and per_subject["death"].sum() > 0
    last = events.group_by("subject_id").agg(pl.col("code").last(), pl.col("time").max().alias("tmax"))
    died = events.filter(pl.col("code") == "MEDS_DEATH").select("subject_id", pl.col("time").alias("tdeath"))
    # nothing after death
    assert (last.join(died, on="subject_id")["tmax"] == last.join(died, on="subject_id")["tdeath"]).all()


def test_events_per_patient_and_long_tailed_vocabulary(events):
    n_subjects = events["subject_id"].n_unique()
    assert 100 <= events.height / n_subjects <= 400
    counts = events.group_by("code").len()["len"].sort(descending=True).to_numpy()
    assert counts.size > 1000
    top = counts[: counts.size // 20].sum() / counts.sum()
    assert top > 0.6                                   # 5% of codes carry most events
    assert (counts <= 3).sum() > 0.3 * counts.size      # and a long tail of rare codes
    icd = events.filter(pl.col("code").str.starts_with("ICD10CM//"))["code"].unique()
    assert {"ICD10CM//E11.9", "ICD10CM//I10", "ICD10CM//I50.9"} <= set(icd.to_list())


def test_labs_move_with_disease_and_treatment(events):
    diabetic = events.filter(pl.col("code").str.starts_with("ICD10CM//E11"))["subject_id"].unique()
    a1c = events.filter(pl.col("code") == "LOINC//4548-4")
    assert a1c.filter(pl.col("subject_id").is_in(diabetic))["numeric_value"].mean() > \
        a1c.filter(~pl.col("subject_id").is_in(diabetic))["numeric_value"].mean() + 1.0
    # LDL at the hyperlipidemia diagnosis visit vs LDL once on atorvastatin, within the same patients
    dx = events.filter(pl.col("code").str.starts_with("ICD10CM//E78")).group_by("subject_id").agg(
        pl.col("time").min().alias("dx"))
    statin = events.filter(pl.col("code") == "ATC//C10AA05").group_by("subject_id").agg(
        pl.col("time").min().alias("start"))
    started_after_dx = dx.join(statin, on="subject_id").filter(pl.col("start") >= pl.col("dx") + pl.duration(days=1))
    ldl = events.filter(pl.col("code") == "LOINC//13457-7").join(started_after_dx, on="subject_id")
    at_dx = ldl.filter(pl.col("time") == pl.col("dx")).group_by("subject_id").agg(pl.col("numeric_value").mean())
    after = ldl.filter(pl.col("time") > pl.col("start")).group_by("subject_id").agg(pl.col("numeric_value").mean())
    paired = at_dx.join(after, on="subject_id", suffix="_after")
    assert paired.height > 20
    assert (paired["numeric_value"] - paired["numeric_value_after"]).mean() > 30


def test_comorbidity_interaction_diabetes_raises_ckd(events):
    firsts = events.filter(pl.col("code").str.starts_with("ICD10CM//E11") | pl.col("code").str.starts_with(
        "ICD10CM//N18")).with_columns(pl.col("code").str.slice(9, 3).alias("fam")).group_by(["subject_id", "fam"]).len()
    dm = set(firsts.filter(pl.col("fam") == "E11")["subject_id"])
    ckd = set(firsts.filter(pl.col("fam") == "N18")["subject_id"])
    everyone = set(events["subject_id"].unique())
    rate_dm = len(dm & ckd) / len(dm)
    rate_rest = len(ckd - dm) / len(everyone - dm)
    assert rate_dm > 1.5 * rate_rest


def test_family_history_codes_appear_only_in_the_first_observed_years(events):
    first = events.filter(pl.col("time").is_not_null() & (pl.col("code") != "MEDS_BIRTH")).group_by(
        "subject_id").agg(pl.col("time").min().alias("t0"))
    fh = events.filter(pl.col("code").is_in(["ICD10CM//Z82.49", "ICD10CM//Z83.3"])).join(first, on="subject_id")
    assert fh.height > 20
    years = ((fh["time"] - fh["t0"]).dt.total_days() / 365).to_numpy()
    assert years.max() < 2.0
    assert np.isfinite(years).all()


def test_output_passes_the_reference_meds_schemas(cohort):
    import meds

    root, _ = cohort
    for path in (root / "data").rglob("*.parquet"):
        meds.DataSchema.validate(pq.read_table(path))
    meds.CodeMetadataSchema.validate(pq.read_table(root / "metadata" / "codes.parquet"))
    meds.SubjectSplitSchema.validate(pq.read_table(root / "metadata" / "subject_splits.parquet"))
    meds.DatasetMetadataSchema.validate(json.loads((root / "metadata" / "dataset.json").read_text()))
    bad = pq.read_table(next((root / "data").rglob("*.parquet"))).drop_columns(["code"])
    with pytest.raises(Exception):
        meds.DataSchema.validate(bad)
