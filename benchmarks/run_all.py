"""Run every benchmark in this folder, one after another (they measure the machine: run them alone).

    python3 dev.py bench            # all
    python3 dev.py bench analysis   # those whose file name contains 'analysis'

Each benchmark prints its own ratio against a peer or a limit measured in the same run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = argv[0] if argv else ""
    failures = 0
    for path in sorted(HERE.glob("bench_*.py")):
        if wanted not in path.name:
            continue
        print(f"\n===== {path.name} =====", flush=True)
        t = time.time()
        rc = subprocess.call([sys.executable, str(path)])
        print(f"===== {path.name}: exit {rc}, {time.time() - t:.0f}s =====", flush=True)
        failures += rc != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
