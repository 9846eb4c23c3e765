"""The device mesh and the one table that maps logical tensor axes to mesh axes.

Mesh axes:
  data    pure data parallelism: parameters replicated, batch split.
  fsdp    data parallelism with parameters (and optimizer state) split along their `embed` axis
          (ZeRO-3 style; XLA all-gathers a layer's weights where they are used).
  tensor  Megatron-style model parallelism over attention heads, MLP hidden units and the vocab.

Model code names tensor axes logically (`batch`, `embed`, `heads`, ...); `RULES` below is the only
place that decides where they live. A mesh axis that does not divide a dimension is dropped for
that dimension (the dimension is replicated instead), so tiny test models run on any mesh.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis, tuple of mesh axes, or None (replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,  # RMSNorm scales: too small to be worth splitting
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def make_mesh(data: int | None = None, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all, across all hosts).

    `data` defaults to whatever is left after fsdp * tensor.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
        raise ValueError(f"fsdp={fsdp} x tensor={tensor} must be >= 1 and divide the {n} devices")
    if data is None:
        data = n // (fsdp * tensor)
    if data * fsdp * tensor != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} != {n} devices")
    return jax.make_mesh((data, fsdp, tensor), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | Any | None = None) -> P:
    """PartitionSpec for a tensor whose axes have these logical names.

    With `shape` and `mesh`, mesh axes that do not divide their dimension are dropped.
    """
    spec = []
    for i, name in enumerate(logical_axes):
        rule = RULES[name] if name is not None else None
        axes = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
        if shape is not None and mesh is not None:
            sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
            kept = []
            for a in axes:
                if shape[i] % (math.prod(sizes[k] for k in kept) * sizes[a]) == 0:
                    kept.append(a)
            axes = tuple(kept)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation; the identity when traced outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def param_shardings(abstract_params: Any, mesh: Mesh) -> Any:
    """NamedShardings for an nnx.State of (abstract) Variables, from their `out_sharding` names."""
    from flax import nnx

    def one(v):
        names = v.get_metadata().get("out_sharding") or (None,) * len(v.shape)
        return NamedSharding(mesh, logical_to_spec(names, v.shape, mesh))

    return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays [B, L]: rows split over ('data', 'fsdp'), positions whole."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length")))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a dict of host arrays [B_local, L] as global arrays sharded over the batch axes.

    On one host B_local is the whole batch. On several hosts each process passes its own
    B_local rows (the global batch is the concatenation over processes in process order).
    """
    sharding = batch_sharding(mesh)
    n_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array) and v.sharding == sharding:
            out[k] = v
            continue
        v = np.asarray(v)
        if (v.shape[0] * jax.process_count()) % n_shards:
            raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows per process, which does not "
                             f"split over data x fsdp = {n_shards} devices")
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


def initialize_distributed(cpu_collectives: str | None = None, **kwargs: Any) -> None:
    """Join a multi-host JAX job; call once per process before any other JAX call.

    Only needed when several processes (hosts) form one job, e.g. a TPU pod slice or several
    GPU nodes; a single host, with any number of local devices, needs nothing. On Cloud TPU,
    SLURM, Open MPI and Kubernetes (JobSet) the coordinator, the process count and this
    process's id are detected from the environment, so no arguments are needed. Elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port (process 0's address), and pass num_processes and
    process_id (e.g. from your launcher's rank variables); JAX_LOCAL_DEVICE_IDS restricts the
    local devices. Keyword arguments go to `jax.distributed.initialize` unchanged. Processes on
    the CPU backend need `cpu_collectives="gloo"` (XLA's CPU client has no cross-process
    collectives otherwise); it is ignored by GPU and TPU. Afterwards
    `jax.devices()` lists every device of the job, `make_mesh()` spans all hosts, and each
    process feeds its own rows through `shard_batch`.

    Idempotent: a second call in the same process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(**kwargs)
