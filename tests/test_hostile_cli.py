"""Hostile use of the `medscale` command (issue 19): no traceback for any user-caused or environment
error, one message naming the path and what to do, the exit status that tells the truth, and a rerun
after the fix that resumes. These run the command in a subprocess: the exit status and the absence of
a traceback are what is tested."""
from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer

from conftest import child_env, tiny_spec, write_spec
from medscale.scaling.sweep.store import RunStore

MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]
TRACEBACK_SIGNS = ("Traceback", "SIGTERM received", "logging.cc", "Error:")  # "Error:" as in "TypeError: ..."


def _env() -> dict:
    env = child_env()
    env["COLUMNS"] = "80"  # a narrow terminal, as CI has, for the width checks
    return env


def medscale(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(MEDSCALE + [str(a) for a in args], env=_env(), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def _clean_failure(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert not any(sign in text for sign in TRACEBACK_SIGNS), text
    for needle in needles:
        assert needle in " ".join(text.split()), text  # rich may wrap long lines
    return text


# ---------------------------------------------------------------------------------------------
# medscale fit: degenerate fits, files that are not tables
# ---------------------------------------------------------------------------------------------

def _law_table(path: Path, loss) -> Path:
    N, D = np.meshgrid([1e5, 3e5, 1e6, 3e6], [1e7, 3e7, 1e8])
    pd.DataFrame({"N": N.ravel(), "D": D.ravel(), "L": loss(N.ravel(), D.ravel())}).to_csv(path, index=False)
    return path


FIT_CASES = [
    ("constant losses", lambda p: _law_table(p / "t.csv", lambda N, D: np.full(N.shape, 3.0)), 0, ["Approach 3"]),
    ("inverted losses", lambda p: _law_table(p / "t.csv", lambda N, D: 1 + 1e-6 * N ** 0.3 + 1e-6 * D ** 0.3), 0,
     ["Approach 3"]),
    ("empty file", lambda p: _write(p / "t.csv", b""), 2, ["cannot be read as a CSV table"]),
    ("header only", lambda p: _write(p / "t.csv", b"N,D,L\n"), 2, ["the table has no rows"]),
    ("binary junk", lambda p: _write(p / "t.csv", bytes(range(256)) * 8), 2, ["cannot be read as a CSV table"]),
    ("junk parquet", lambda p: _write(p / "t.parquet", b"PAR1 not really"), 2, ["cannot be read as parquet"]),
    ("a folder", lambda p: p, 2, ["is a folder"]),
    ("no such file", lambda p: p / "missing.csv", 2, ["no such file"]),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case,make,code,needles", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_on_hostile_tables(tmp_path, case, make, code, needles):
    table = make(tmp_path)
    result = medscale("fit", table, "--params", "N", "--loss", "L", "--tokens", "D", "--n-boot", "3")
    _clean_failure(result, code, *needles)


# ---------------------------------------------------------------------------------------------
# output paths: a file, read-only, a full disk
# ---------------------------------------------------------------------------------------------

def test_out_naming_a_file_is_refused_by_each_command(tmp_path, tiny_dataset):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0]))
    for args in (["generate", "--subjects", 5, "--out", a_file], ["tokenize", tiny_dataset[0], "--out", a_file],
                 ["sweep", spec, "--out", a_file]):
        _clean_failure(medscale(*args), 2, f"{a_file} is a file, not a folder")
    assert a_file.read_text() == "mine\n"


def _as_unprivileged():
    """Run the child as `nobody` when we are root (root writes through read-only permissions)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"preexec_fn": lambda: (os.setgid(nobody.pw_gid), os.setuid(nobody.pw_uid))}


def test_read_only_out_is_an_environment_error_and_a_rerun_after_the_fix_completes():
    with tempfile.TemporaryDirectory() as top:  # outside pytest's private tmp, so that `nobody` can reach it
        base = Path(top)
        os.chmod(base, 0o755)
        parent = base / "read_only"
        parent.mkdir(mode=0o555)
        os.chmod(parent, 0o555)
        out = parent / "cohort"
        result = medscale("generate", "--subjects", 5, "--out", out, "--workers", 1, cwd=top, **_as_unprivileged())
        _clean_failure(result, 1, str(parent), "Permission denied", "rerun the same command to resume")
        os.chmod(parent, 0o777)
        again = medscale("generate", "--subjects", 5, "--out", out, "--workers", 1, cwd=top, **_as_unprivileged())
        assert again.returncode == 0, again.stderr
        assert (out / "metadata" / "subject_splits.parquet").exists()


def test_a_full_disk_is_an_environment_error_naming_the_path():
    from medscale.scaling.cli import user_errors

    @user_errors
    def write_to_a_full_disk():
        with open("/dev/full", "w") as f:  # the kernel answers ENOSPC
            f.write("x")
            f.flush()

    with pytest.raises(typer.Exit) as info:
        write_to_a_full_disk()
    assert info.value.exit_code == 1


def test_a_full_disk_message(capsys):
    from medscale.atomic import naming
    from medscale.scaling import cli

    try:
        with naming("/dev/full"), open("/dev/full", "w") as f:  # a write error carries no path of its own
            f.write("x")
            f.flush()
    except OSError as err:
        exit_ = cli._os_error(err)
    assert exit_.exit_code == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "/dev/full" in said and "the disk is full: free some space; then rerun the same command" in said


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs), where one can be mounted (root); it can then be grown."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a small file system here (not root); test_a_full_disk_message covers the message")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_during_tokenize_and_a_rerun_after_freeing_space(small_disk, tiny_dataset):
    out = small_disk / "tokens"
    full = medscale("tokenize", tiny_dataset[0], "--out", out, "--workers", 1)
    _clean_failure(full, 1, str(out), "No space left on device", "the disk is full",
                   "rerun the same command to resume")
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = medscale("tokenize", tiny_dataset[0], "--out", out, "--workers", 1)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# sweep --dry-run: big grids, alias bombs, the table in a file
# ---------------------------------------------------------------------------------------------

def test_dry_run_table_is_not_cut_to_80_columns_in_a_pipe(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0]))
    result = medscale("sweep", spec, "--dry-run", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "run" in line and "est. time" in line)
    assert len(header) > 80 and "FLOPs full" in header and "d_model x layers (heads)" in header
    # a dry run writes nothing (memory plans are cached outside --out), so the real sweep may use the same
    # fresh --out (before, a .memory_plans folder there made the sweep refuse it as the user's folder)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["grid over the limit", "alias bomb"])
def test_dry_run_refuses_explosive_specs_promptly(tmp_path, tiny_dataset, case):
    spec = tiny_spec(tiny_dataset[0])
    path = write_spec(tmp_path / "spec.yaml", spec)
    if case == "grid over the limit":
        spec["grid"]["tokens"] = [15360 * (i + 1) for i in range(3000)]
        write_spec(path, spec)
        needles = ["expands to 3,000 runs", "--allow-large-grid"]
    else:
        lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
        path.write_text("\n".join(lines + ["name: *i"]) + "\n")
        needles = ["expand to more than 10,000 values"]
    text = _clean_failure(medscale("sweep", path, "--dry-run", "--out", tmp_path / "out"), 2, *needles)
    assert len(text) < 2000


# ---------------------------------------------------------------------------------------------
# analyze reads only
# ---------------------------------------------------------------------------------------------

def test_analyze_writes_nothing_into_the_store(tmp_path):
    from medscale.atomic import write_json

    store_root = tmp_path / "store"
    store = RunStore(store_root, say=lambda m: None).claim()
    rng = np.random.default_rng(0)
    for i, (n, d) in enumerate([(n, d) for n in (32, 48, 64, 96) for d in (1e6, 3e6, 1e7)]):
        config = {"sweep": "s", "objective": "decoder", "budget": None,
                  "model": {"vocab_size": 100, "d_model": n, "n_layers": 2, "n_heads": 2, "d_ff": 4 * n,
                            "max_len": 64, "causal": True},
                  "data": {"token_dir": "/x", "dataset_id": "abc", "seq_len": 32, "batch_size": 8, "mask_prob": 0.15},
                  "train": {"tokens": int(d), "steps": 100, "seed": 0, "lr": 1e-3},
                  "eval": {"n_evals": 2, "batches": 1}, "checkpoint": {"every_steps": 5}}
        run = store.ensure(config)
        params = 24 * n * n
        loss = 1.5 + 400 / params ** 0.35 + 900 / d ** 0.3 + rng.normal(0, 1e-3)
        write_json(run.metrics_path, {"loss": loss, "params": params, "tokens": int(d), "compute": 6 * params * d})
        run.set_status("done", attempts=1)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in store_root.rglob("*")}
    result = medscale("analyze", store_root, "--report", tmp_path / "report", "--n-boot", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "report" / "index.html").exists()
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in store_root.rglob("*")} == before


# ---------------------------------------------------------------------------------------------
# interrupts: a one-line hint that a rerun resumes, no native stack
# ---------------------------------------------------------------------------------------------

def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"process ended before {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _running(out: Path) -> bool:
    return any(run.state() == "running" for run in RunStore(out, say=lambda m: None).runs())


@pytest.mark.slow
def test_sigterm_to_the_sweep_driver_ends_with_a_hint_and_a_rerun_finishes(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tiny_dataset[0]))
    out = tmp_path / "out"
    driver = subprocess.Popen(MEDSCALE + ["sweep", str(spec), "--out", str(out)], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _running(out), driver, "a running run")
        driver.send_signal(signal.SIGTERM)
        log, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 128 + signal.SIGTERM, log
    assert not any(sign in log for sign in TRACEBACK_SIGNS), log
    assert "error: terminated (SIGTERM); rerun the same command to resume" in log
    again = medscale("sweep", spec, "--out", out, timeout=400)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log
    assert [run.state() for run in RunStore(out).runs()] == ["done"]
    # the live progress reads cleanly in a log: whole lines, no cursor control
    assert "sweep tiny: 1/1 done, 0 running, 0 failed, 0 diverged" in log and "\r" not in log and "\x1b[" not in log


def test_sigint_to_generate_ends_with_a_hint_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "cohort"
    # 50 subjects a shard (as 2000 in 40 were): the interrupt after 2 shards still lands with 10 to go
    args = ["generate", "--subjects", "600", "--shards", "12", "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(MEDSCALE + args, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(list(out.glob("data/*/*.parquet"))) >= 2, proc, "the first shards")
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("generate finished before the interrupt arrived")
    assert proc.returncode == 128 + signal.SIGINT, log
    assert not any(sign in log for sign in TRACEBACK_SIGNS), log
    assert "interrupted (SIGINT); rerun the same command to resume" in " ".join(log.split())
    from medscale.data.meds import MedsError, read_meds

    with pytest.raises(MedsError, match="incomplete"):
        read_meds(out)  # the partial cohort is never trusted
    again = medscale(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_meds(out).n_subjects() == 600 and not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# a corrupted latest checkpoint and corrupt metrics: the rerun recomputes exactly
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_and_ends_where_an_intact_run_ends(tmp_path, tiny_dataset):
    spec = write_spec(tmp_path / "run.yaml", tiny_spec(tiny_dataset[0]))
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        first = medscale("train", spec, "--out", out)
    finally:
        os.umask(old)
    assert first.returncode == 0, first.stdout + first.stderr
    (run,) = list(RunStore(out).runs())
    reference = run.metrics()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in files), \
        [str(p) for p in files if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]  # collaborators can read

    latest = max(int(p.name) for p in run.ckpt_dir.iterdir() if p.name.isdigit())
    for blob in (run.ckpt_dir / str(latest)).rglob("*"):
        if blob.is_file() and blob.parent.name == "d":
            blob.write_bytes(os.urandom(24))  # the array data of the latest checkpoint is garbage
    run.metrics_path.write_text(json.dumps(reference)[:40])  # and the metrics were torn

    again = medscale("train", spec, "--out", out)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text
    assert f"checkpoint at step {latest} cannot be restored" in " ".join(text.split())
    assert "resuming the run from its last checkpoint" in " ".join(text.split())
    recomputed = run.metrics()
    assert recomputed["resumed_from_step"] < latest
    assert recomputed["loss"] == reference["loss"]  # exact resume from the checkpoint before
    assert (run.path / "ckpt-damaged" / str(latest)).is_dir()
