"""benchmarks/bench_gpu.py, the prepared GPU check: its CPU dry run takes every section's path and fills every
section of the results file, so the script cannot rot while no GPU is at hand."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402


def test_the_peak_comes_from_the_table_and_is_never_guessed():
    assert bench_gpu.bf16_peak("NVIDIA H100 80GB HBM3", "gpu") == 989e12  # SXM
    assert bench_gpu.bf16_peak("NVIDIA H100 PCIe", "gpu") == 756e12
    assert bench_gpu.bf16_peak("NVIDIA H200", "gpu") == 989e12
    assert bench_gpu.bf16_peak("NVIDIA A100-SXM4-80GB", "gpu") == 312e12
    assert bench_gpu.bf16_peak("Some Future Accelerator", "gpu") is None
    assert bench_gpu.bf16_peak("cpu", "cpu") is None
    assert bench_gpu.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_a_section_that_cannot_fit_the_budget_is_skipped_and_said_so():
    budget = bench_gpu.Budget(10)
    deadline = budget.section("throughput", cap_s=100, least_s=5)
    assert deadline is not None and deadline <= time.monotonic() + 10
    assert budget.section("sweep", cap_s=100, least_s=60) is None
    assert budget.log and budget.log[0].startswith("sweep: skipped")


def _sections(text: str) -> dict[str, list[dict[str, str]]]:
    """Each '## ' section's table rows as {header: cell}, and its other lines under '_lines'."""
    out = {}
    for block in text.split("\n## ")[1:]:
        title, *lines = block.splitlines()
        table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")]
        rows = [dict(zip(table[0], cells)) for cells in table[1:]] if table else []
        out[title.split(":")[0].split(",")[0].strip()] = rows + [{"_lines": "\n".join(lines)}]
    return out


@pytest.mark.slow
def test_the_dry_run_fills_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    before = set((ROOT / "benchmarks" / "results").iterdir())
    started = time.time()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"dry run: {time.time() - started:.0f} s")
    assert set((ROOT / "benchmarks" / "results").iterdir()) == before, "a dry run must not write committed results"
    text = out.read_text()
    assert text.startswith("# GPU check: cpu (CPU DRY RUN)")
    sections = _sections(text)
    assert {"Throughput", "Memory", "Sweep through Ray", "PyTorch", "Sections"} <= set(sections), list(sections)
    rows = {name: [r for r in sections[name] if "_lines" not in r] for name in sections}
    for name in ("Throughput", "Memory", "Sweep through Ray"):
        assert rows[name] and all(r["measured on"] == "CPU dry run" for r in rows[name]), name

    # throughput: both attention paths x both remat settings, each measured, each saying what it ran
    throughput = rows["Throughput"]
    asked = {(r["attention: asked -> ran"].split(" -> ")[0], r["remat (layers scanned)"].split()[0]) for r in throughput}
    assert asked == {("auto", "none"), ("auto", "full"), ("blocked", "none"), ("blocked", "full")}
    for r in throughput:
        assert r["status"] == "ok", r
        assert float(r["tok/s median"].replace(",", "")) > 0 and int(r["steps timed"]) > 0
        assert math.isfinite(float(r["loss"])) and r["dtype"] == "float32"
        ran = r["attention: asked -> ran"].split(" -> ")[1]
        assert ran == ("blocked" if r["attention: asked -> ran"].startswith("blocked") else "xla (models/attention_block.py)")
        assert r["remat (layers scanned)"].endswith("(yes)" if r["remat (layers scanned)"].startswith("full") else "(no)")
        assert r["MFU median"] == "n/a"  # no bf16 peak is made up for a CPU

    # memory: the planner's figure and a measured one for every row
    memory = rows["Memory"]
    assert len(memory) == 4
    for r in memory:
        assert float(r["planned peak GiB"]) > 0 and float(r["measured peak GiB"]) > 0, r

    # sweep: two runs done, every attempt in its own worker, the killed one resumed from its checkpoint
    sweep = rows["Sweep through Ray"]
    assert len(sweep) == 2 and all(r["state"] == "done" and r["backend"] == "cpu" for r in sweep), sweep
    pids = [p.split()[0] for r in sweep for p in r["worker pid(s)"].split(", ")]
    assert len(pids) == 3 and len(set(pids)) == 3, pids
    (killed,) = [r for r in sweep if "(killed)" in r["worker pid(s)"]]
    assert killed["attempts"] == "2" and int(killed["resumed from step"]) > 0
    assert all(int(r["resumed from step"]) == 0 and r["attempts"] == "1" for r in sweep if r is not killed)
    checks = [line for line in sections["Sweep through Ray"][-1]["_lines"].splitlines() if line.startswith("- ")]
    assert len(checks) == 4 and all(line.endswith(": yes") for line in checks), checks

    # PyTorch: measured where torch is installed, else skipped with the reason
    torch_lines = sections["PyTorch"][-1]["_lines"]
    assert rows["PyTorch"] or "skipped: torch is not installed" in torch_lines
    log = [line for line in sections["Sections"][-1]["_lines"].splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in log] == ["- throughput", "- sweep", "- torch", "- whole run"], log
    assert not any("skipped" in line or "FAILED" in line for line in log), log
