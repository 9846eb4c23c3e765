"""How a model is computed, as opposed to its shape (models/config.py): attention kernel,
rematerialisation, scanned layers, compute dtype, gradient accumulation.

None of these change what a run computes beyond float tolerance, except `dtype`; all of them
change its memory and speed. Pure Python (no JAX), like models/config.py, so that sweep
planning can validate them cheaply. A run config carries only the options that differ from
the defaults (`to_dict`), so runs that use none keep the identity they always had.
"""
from __future__ import annotations

import dataclasses
from typing import Any

ATTENTION = ("auto", "xla", "flash")
REMAT = ("none", "dots", "full")
DTYPES = ("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    attention: str = "auto"  # models/attention_impl.py
    remat: str = "none"  # none | dots (keep matmul outputs, recompute the rest) | full (keep layer inputs)
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
