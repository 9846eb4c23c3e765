"""How a model is computed, as opposed to its shape (models/config.py): attention kernel,
rematerialisation, scanned layers, compute dtype, gradient accumulation.

None of these change what a run computes beyond float tolerance, except `dtype`; all of them
change its memory and speed. Pure Python (no JAX), like models/config.py, so that sweep
planning can validate them cheaply. A run config carries only the options that differ from
the defaults (`to_dict`), so runs that use none keep the identity they always had.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

ATTENTION = ("auto", "xla", "flash")
REMAT = ("none", "dots", "full")
DTYPES = ("auto", "float32", "bfloat16")
MESH_AXES = ("data", "fsdp", "tensor")  # models/sharding.py: what each axis splits


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    attention: str = "auto"  # models/attention_impl.py
    remat: str = "none"  # none | dots (keep matmul outputs, recompute the rest) | full (keep layer inputs); scans
    scan_layers: bool = False  # one traced layer, scanned over stacked weights: compile time flat in depth
    dtype: str = "auto"  # compute dtype; auto: bfloat16 on accelerators, float32 on CPU. Weights stay float32.
    microbatches: int = 1  # gradient accumulation: each step's batch in this many sequential slices

    def validate(self) -> ModelOptions:
        for name, allowed in (("attention", ATTENTION), ("remat", REMAT), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"scan_layers must be true or false, got {self.scan_layers!r}")
        if isinstance(self.microbatches, bool) or not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"microbatches must be an int >= 1, got {self.microbatches!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The options that differ from the defaults (a run config records only those)."""
        default = ModelOptions()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ModelOptions:
        d = d or {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model options {unknown}; expected {sorted(names)}")
        return cls(**d).validate()

    def compute_dtype(self, backend: str):
        """The jnp dtype matmuls run in on `backend`."""
        import jax.numpy as jnp

        if self.dtype == "auto":
            return jnp.dtype(jnp.float32 if backend == "cpu" else jnp.bfloat16)
        return jnp.dtype(self.dtype)


def mesh_axes(requested: Mapping[str, int | None] | None, n_devices: int) -> dict[str, int]:
    """{data, fsdp, tensor} sizes for `n_devices` from a partial request (a sweep's resources.mesh).

    An axis given as -1 takes the devices the others leave; omitted, fsdp and tensor are 1 and
    data takes the rest. Raises ValueError naming the axis when the sizes do not fit the devices.
    """
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} unknown; the mesh has {MESH_AXES}")
    sizes = {"data": requested.get("data", -1), "fsdp": requested.get("fsdp", 1),
             "tensor": requested.get("tensor", 1)}
    sizes = {k: -1 if v is None else v for k, v in sizes.items()}
    free = [k for k, v in sizes.items() if v == -1]
    bad = [k for k, v in sizes.items() if v != -1 and (isinstance(v, bool) or not isinstance(v, int) or v < 1)]
    if bad:
        raise ValueError(f"mesh.{bad[0]}={sizes[bad[0]]!r}: an axis size is an int >= 1, or -1 for the rest")
    if len(free) > 1:
        raise ValueError(f"mesh axes {free} are all -1: at most one axis takes the remaining devices")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if n_devices % fixed:
        named = [k for k in MESH_AXES if sizes[k] not in (-1, 1)] or ["data"]
        raise ValueError(f"mesh.{named[-1]}: {' x '.join(f'{k}={sizes[k]}' for k in named)} does not divide "
                         f"the {n_devices} devices a run gets")
    if free:
        sizes[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ValueError(f"mesh: data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = {fixed} "
                         f"is not the {n_devices} devices a run gets; set one axis to -1 to take the rest")
    return sizes
