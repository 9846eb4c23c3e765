#!/usr/bin/env python3
"""Set-up and entry point that needs nothing but Python 3.11.

    python3 dev.py demo [medscale demo options]   # synthetic cohort -> sweeps -> fits -> report
    python3 dev.py test [pytest options]          # the test suite (what CI runs; 2 workers, -n 0 for one)
    python3 dev.py bench                          # benchmarks/ (installs the PyTorch CPU peer)
    python3 dev.py env                            # only create/refresh .venv

Each command first creates or refreshes `.venv` from `requirements.lock` (pinned versions),
reinstalling only when the lock file or pyproject.toml changed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".medscale-stamp"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def ensure_env(extra_lock: Path | None = None) -> None:
    locks = [ROOT / "requirements.lock", ROOT / "pyproject.toml"] + ([extra_lock] if extra_lock else [])
    want = _digest(*locks)
    if STAMP.exists() and STAMP.read_text().strip() == want and PY.exists():
        return
    if sys.version_info < (3, 11):
        sys.exit(f"medscale needs Python 3.11 or 3.12; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"[dev] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("[dev] installing pinned dependencies from requirements.lock (first run: a few minutes)", flush=True)
    subprocess.run(pip + ["-r", str(ROOT / "requirements.lock")], check=True)
    if extra_lock:
        subprocess.run(pip + ["-r", str(extra_lock)], check=True)
    subprocess.run(pip + ["--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)
    STAMP.write_text(want)


def _workers(pytest_args: list[str]) -> list[str]:
    """Two pytest-xdist workers where there are two cores, unless the caller chose (`-n 0`: one process).
    One process kept about one core busy (compiles and process starts run one after another); two keep about
    1.45 busy, 21.6 -> 15.7 min on a 2-core AMD EPYC (AVX2). Each test module stays on one worker, so its
    fixtures and its Ray start once; xdist hands out the modules with the most tests first."""
    if (os.cpu_count() or 1) < 2 or any(a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) or
                                        a in ("no:xdist", "-pno:xdist") for a in pytest_args):
        return []
    return ["-n", "2", "--dist", "loadscope"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    os.chdir(ROOT)
    if cmd == "env":
        ensure_env()
        return 0
    if cmd == "demo":
        ensure_env()
        return subprocess.call([str(BIN / "medscale"), "demo", *rest])
    if cmd == "test":
        ensure_env()
        return subprocess.call([str(PY), "-m", "pytest", *_workers(rest), *rest])
    if cmd == "bench":
        ensure_env(ROOT / "requirements-bench.txt")
        return subprocess.call([str(PY), str(ROOT / "benchmarks" / "run_all.py"), *rest])
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
