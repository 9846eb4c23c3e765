"""What a training process needs to be one of several (a gang): joining the job, its share of the
batch, and decisions every process takes together.

A gang run is SPMD: every process runs `train_run` on its own devices, collectives join them. So
anything that changes the control flow (stop now for a preemption, checkpoint now because the
clock says so, train at all because process 0 got the lease) must be agreed, or the processes
part ways and hang in a collective. Process 0 decides from its view, plus the OR of every
process's stop request; everyone follows. With one process all of this is a local no-op.
"""
from __future__ import annotations

import numpy as np


# the coordinator's port is drawn below the kernel's ephemeral range: JAX's coordination service (gRPC) listens
# with SO_REUSEPORT, so a port another gRPC server (Ray's own, another gang's) took by binding to port 0 would be
# shared silently, each connection landing on either service; Ray's worker ports are 10002-19999 by default
COORDINATOR_PORTS = (20000, 32767)


def free_coordinator_port(rng=None) -> int:
    """A port free on this host now, for jax.distributed's coordinator: drawn from COORDINATOR_PORTS (below the
    ephemeral ports that binding to port 0 hands out, where Ray's own gRPC servers live) and checked by binding it
    without SO_REUSEPORT, which fails while anything listens there; port 0's choice if 64 draws are all taken."""
    import random
    import socket

    rng = rng or random.SystemRandom()
    for _ in range(64):
        port = rng.randint(*COORDINATOR_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def join_gang(coordinator: str, num_processes: int, process_id: int, *, cpu: bool) -> None:
    """Join the job's JAX runtime (before any other JAX call in this process)."""
    from medscale.models.sharding import initialize_distributed

    initialize_distributed(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                           cpu_collectives="gloo" if cpu else None)


def is_primary() -> bool:
    """Process 0 alone writes the run's files (status, lease, curve, metrics)."""
    import jax

    return jax.process_index() == 0


def process_rows(sharding, global_rows: int, row_len: int) -> np.ndarray:
    """The global batch rows this process's devices hold under `sharding`, in the order
    `jax.make_array_from_process_local_data` expects them (ascending)."""
    index_map = sharding.addressable_devices_indices_map((global_rows, row_len))
    rows: set[int] = set()
    for index in index_map.values():
        rows.update(range(*index[0].indices(global_rows)))
    return np.array(sorted(rows), dtype=np.int64)


def broadcast_from_primary(value: int) -> int:
    """Process 0's integer, on every process."""
    import jax

    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


class Agreement:
    """Per-step votes [stop, checkpoint]: `stop` is any process's request (a SIGTERM it got),
    `checkpoint` process 0's (its clock). With several processes a vote cast after step s is read
    after step s + 1 is dispatched, so agreeing never stalls the device queue; every process
    reads the same votes at the same step, so all act at the same step."""

    def __init__(self) -> None:
        import jax

        self.multi = jax.process_count() > 1
        self._pending = None
        if self.multi:
            import jax.numpy as jnp
            from jax.sharding import NamedSharding, PartitionSpec as P

            mesh = jax.make_mesh((jax.device_count(),), ("p",), axis_types=(jax.sharding.AxisType.Auto,))
            self._in = NamedSharding(mesh, P("p"))
            self._local = jax.local_device_count()
            self._reduce = jax.jit(lambda v: jnp.max(v, axis=0), out_shardings=NamedSharding(mesh, P()))

    def vote(self, stop: bool, checkpoint: bool) -> tuple[bool, bool]:
        """Cast this step's vote; returns the decision to act on now."""
        if not self.multi:
            return stop, checkpoint
        import jax

        mine = np.array([[int(stop), int(checkpoint and is_primary())]] * self._local, dtype=np.int32)
        cast = self._reduce(jax.make_array_from_process_local_data(self._in, mine))
        previous, self._pending = self._pending, cast
        if previous is None:
            return False, False
        decided = np.asarray(previous)
        return bool(decided[0]), bool(decided[1])

