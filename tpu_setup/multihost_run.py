#!/usr/bin/env python
"""Run one command on every host of a multi-host TPU slice at once, through Ray.

    python tpu_setup/multihost_run.py --address auto --pod-type v4-32               # check the slice
    python tpu_setup/multihost_run.py --address auto --pod-type v4-32 -- CMD ARGS   # your program

A multi-host slice (v4-16 and up, v5litepod-16 and up, ...) runs one JAX program as SPMD: every
host starts the same program at the same time, each process calls
`medscale.models.sharding.initialize_distributed()` before any other JAX call, and together they see all
the slice's chips. This helper finds the slice through the resource Ray puts on its worker 0
(`TPU-<pod type>-head`), then starts one task per host, each holding that host's chips and the
slice's name resource, so exactly one task lands on each host of that slice. Each task runs the
command in a subprocess (in this directory, when it exists on that host); its output is forwarded to this terminal by Ray. Exits non-zero if any
host's command failed.

Without a command it runs a check: every host initialises the distributed runtime and prints its
process index, the process count and the global/local device counts.

Not needed for sweeps: `medscale sweep` schedules many single-host runs, one Ray task each.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys

POD_TYPE = re.compile(r"^(v|tpu)\d+[a-z]*-\d+$")  # v4-32, v5litepod-16, v6e-16, tpu7x-32

CHECK = (
    "from medscale.models.sharding import initialize_distributed\n"
    "initialize_distributed()\n"
    "import jax, socket\n"
    "print(f'{socket.gethostname()}: process {jax.process_index()}/{jax.process_count()}, '\n"
    "      f'{jax.local_device_count()} local of {jax.device_count()} devices', flush=True)\n"
)


def head_resource(pod_type: str) -> str:
    """The custom resource Ray gives worker 0 of a TPU slice of this type."""
    if not POD_TYPE.match(pod_type):
        raise ValueError(f"--pod-type must look like v4-32 or v5litepod-16 (got {pod_type!r})")
    return f"TPU-{pod_type}-head"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run one command on every host of a multi-host TPU slice, through Ray "
                    "(default command: a jax.distributed check).",
        usage="%(prog)s --pod-type TYPE [--address ADDR] [-- COMMAND ...]")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto, on a cluster node)")
    parser.add_argument("--pod-type", required=True, help="slice accelerator type, e.g. v4-32 or v5litepod-16")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for a free slice of this type (default 600)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="command to run on every host, after `--` (default: the distributed check)")
    args = parser.parse_args(argv)
    try:
        head_resource(args.pod_type)
    except ValueError as err:
        parser.error(str(err))
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from ray.util import tpu

    ray.init(address=args.address)

    @ray.remote(num_cpus=0)
    def describe_slice() -> tuple[str, int, int]:
        # Runs on worker 0 of a free slice: its name, host count and chips per host.
        return tpu.get_current_pod_name(), tpu.get_current_pod_worker_count(), tpu.get_num_tpu_chips_on_node()

    head = describe_slice.options(resources={head_resource(args.pod_type): 1}).remote()
    ready, _ = ray.wait([head], timeout=args.timeout)
    if not ready:
        ray.cancel(head)
        print(f"no free {args.pod_type} slice in the cluster after {args.timeout:.0f}s (see `ray status`)",
              file=sys.stderr)
        return 2
    name, hosts, chips = ray.get(head)
    print(f"slice {name}: {hosts} hosts x {chips} chips", flush=True)

    @ray.remote(num_cpus=0)
    def run_on_host(command: list[str] | None, cwd: str) -> tuple[str, int]:
        cmd = command or [sys.executable, "-c", CHECK]
        cwd = cwd if os.path.isdir(cwd) else os.path.expanduser("~")
        return socket.gethostname(), subprocess.run(cmd, cwd=cwd, check=False).returncode

    # {"TPU": chips} takes the host's chips; {name: 1} (one unit per host of this slice) keeps all
    # tasks on this slice and one per host.
    refs = [run_on_host.options(resources={"TPU": chips, name: 1}).remote(args.command or None, os.getcwd())
            for _ in range(hosts)]
    failed = 0
    for host, code in ray.get(refs):
        print(f"{host}: exit {code}", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
