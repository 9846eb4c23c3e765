"""claim_cores: a process (a reused Ray worker) keeps the cores it claimed, and when too few are free it shares
cores without holding any lock (it used to keep the locks it got and take more on every call)."""
import json
import os
import subprocess
import sys
import time

CLAIM = """
import json, sys, time
from medscale.scaling.run import runtime
first = runtime.claim_cores(int(sys.argv[1]))
again = runtime.claim_cores(int(sys.argv[1]))
print(json.dumps({"first": first, "again": again, "locks": len(runtime._held_locks)}), flush=True)
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
"""


def _claim(tmp_path, n: int, hold_s: float | None = None):
    env = dict(os.environ, MEDSCALE_CORE_LOCK_DIR=str(tmp_path / "locks"))
    args = [sys.executable, "-c", CLAIM, str(n)] + ([str(hold_s)] if hold_s else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)


def test_a_process_keeps_its_cores_and_shares_without_locks_when_none_are_free(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    holder = _claim(tmp_path, len(allowed), hold_s=30)  # holds every core's lock
    try:
        held = json.loads(holder.stdout.readline())
        assert held["first"] == held["again"] == allowed and held["locks"] == len(allowed)
        late = _claim(tmp_path, 1)
        out = json.loads(late.communicate(timeout=60)[0])
        assert out["first"] == out["again"] == allowed[:1]
        assert out["locks"] == 0
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    free = _claim(tmp_path, 1)
    out = json.loads(free.communicate(timeout=60)[0])
    assert out["first"] == out["again"] and len(out["first"]) == 1 and out["locks"] == 1
