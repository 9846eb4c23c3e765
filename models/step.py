"""Functional train state and jitted, sharded train / eval steps.

A train state is a plain pytree, `{"step": int32[], "params": {...}, "opt_state": ...}`, with
params as a nested dict of arrays (`nnx.to_pure_dict`), so orbax saves and restores it as is:
restore into `abstract_train_state(...)[1]` to get the same shardings back (exact resume).
The model's structure lives in the static `graphdef`; `nnx.merge` inside the jitted step costs
nothing at run time (it happens once, at trace time).

A batch is a dict of arrays [B, L]: `inputs`, `targets` (int32), `weights` (float32, the loss
weight of each position), `segment_ids` (int32). The loss is sum(weights * CE) / sum(weights),
in float32. Gradient clipping and the learning-rate schedule belong to the optax `tx`.

`microbatches=K` accumulates the gradient over K slices of the batch, one after another, so a
step's activations are those of B/K rows; loss and update equal the whole batch's to float
tolerance (the sums are divided by the whole batch's weight).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from medscale.models.config import ModelConfig
from medscale.models.options import ModelOptions
from medscale.models.sharding import batch_sharding, param_shardings, replicated, shard_batch
from medscale.models.transformer import Transformer

TrainState = dict[str, Any]
Batch = Mapping[str, Any]
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids")


def model_kwargs(options: ModelOptions | None, compute_dtype=None) -> dict[str, Any]:
    """Transformer keyword arguments for these options (an explicit compute_dtype wins)."""
    options = options or ModelOptions()
    if compute_dtype is None and options.dtype != "auto":
        compute_dtype = options.compute_dtype(jax.default_backend())
    return {"compute_dtype": compute_dtype, "attention": options.attention, "remat": options.remat,
            "scan_layers": options.scan_layers}


def abstract_train_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, *,
                         param_dtype=jnp.float32, compute_dtype=None, options: ModelOptions | None = None,
                         ) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, train state of jax.ShapeDtypeStruct carrying the shardings on `mesh`).

    This is the restore target for orbax, and what `init_train_state` materialises.
    """
    kw = model_kwargs(options, compute_dtype)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, **kw))
    graphdef, abs_vars = nnx.split(model, nnx.Param)
    params_sh = nnx.to_pure_dict(param_shardings(abs_vars, mesh))
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                          nnx.to_pure_dict(abs_vars), params_sh)
    opt_state = jax.eval_shape(tx.init, params)
    # optimizer moments are sharded like their parameters, everything else (counts) replicated
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt_state, params_sh,
                                   transform_non_params=lambda _: replicated(mesh))
    opt_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             opt_state, opt_sh)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
    return graphdef, {"step": step, "params": params, "opt_state": opt_state}


def _shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def init_train_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                     seed: int = 0, *, param_dtype=jnp.float32, compute_dtype=None,
                     options: ModelOptions | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise parameters and optimizer state directly in their shards on `mesh`.

    Values depend on `seed` only, not on the mesh. compute_dtype defaults to bfloat16 on
    accelerators and float32 on CPU; it is part of the graphdef.
    """
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, param_dtype=param_dtype,
                                              compute_dtype=compute_dtype, options=options)
    kw = model_kwargs(options, compute_dtype)

    def init() -> TrainState:
        model = Transformer(cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype, **kw)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return graphdef, jax.jit(init, out_shardings=_shardings(abstract))()


def weighted_xent(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                  ) -> tuple[jax.Array, jax.Array]:
    """(sum of weights * cross-entropy, sum of weights), float32."""
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), targets_BxL)
    weights_BxL = weights_BxL.astype(jnp.float32)
    return jnp.sum(ce_BxL * weights_BxL), jnp.sum(weights_BxL)


def _loss_terms(graphdef: nnx.GraphDef, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    logits_BxLxV = model(batch["inputs"], batch["segment_ids"])
    return weighted_xent(logits_BxLxV, batch["targets"], batch["weights"])


class _ShardedStep:
    """Calls `fn(state, batch)` jitted for the shardings of the first state it sees.

    Host (numpy) batches are placed with `shard_batch`; device batches already sharded over
    the batch axes pass through.
    """

    def __init__(self, fn: Callable, mesh: Mesh, donate: bool, out_metrics: bool):
        self.fn, self.mesh, self.donate, self.out_metrics = fn, mesh, donate, out_metrics
        self.jitted = None

    def _jit(self, state: TrainState):
        if self.jitted is None:
            state_sh = _shardings(state)
            batch_sh = {k: batch_sharding(self.mesh) for k in BATCH_KEYS}
            metrics_sh = replicated(self.mesh)
            out_sh = (state_sh, metrics_sh) if self.out_metrics else metrics_sh
            self.jitted = jax.jit(self.fn, in_shardings=(state_sh, batch_sh), out_shardings=out_sh,
                                  donate_argnums=(0,) if self.donate else ())
        return self.jitted

    def __call__(self, state: TrainState, batch: Batch):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; a batch has {BATCH_KEYS}")
        batch = shard_batch({k: batch[k] for k in BATCH_KEYS}, self.mesh)
        jitted = self._jit(state)
        with jax.set_mesh(self.mesh):
            return jitted(state, batch)

    def lower(self, abstract_state: TrainState, batch_size: int, seq_len: int):
        """The step lowered for an abstract state and batch shape: compile it for its memory
        analysis without allocating anything (scaling/plan/memory.py)."""
        sharding = batch_sharding(self.mesh)
        dtypes = {"inputs": jnp.int32, "targets": jnp.int32, "weights": jnp.float32, "segment_ids": jnp.int32}
        batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), dtypes[k], sharding=sharding) for k in BATCH_KEYS}
        jitted = self._jit(abstract_state)
        with jax.set_mesh(self.mesh):
            return jitted.lower(abstract_state, batch)


def microbatched(batch: Batch, k: int, mesh: Mesh | None = None) -> dict[str, jax.Array]:
    """[B, L] arrays -> [k, B/k, L]: microbatch m holds rows m, m + k, m + 2k, ...

    Strided rather than contiguous slices, so that each device keeps its own rows: the rows a
    device holds split evenly over the k microbatches, and no microbatch lives on a few devices.
    """
    def split(x):
        B = x.shape[0]
        x_MxKxL = x.reshape(B // k, k, *x.shape[1:])
        return jnp.swapaxes(x_MxKxL, 0, 1)  # [k, B/k, L]

    out = {key: split(v) for key, v in batch.items()}
    if mesh is not None and not jax.sharding.get_abstract_mesh().empty:
        spec = jax.sharding.PartitionSpec(None, *batch_sharding(mesh).spec)
        out = {key: jax.lax.with_sharding_constraint(v, spec) for key, v in out.items()}
    return out


def check_microbatches(batch_size: int, microbatches: int, mesh: Mesh) -> None:
    """Raise ValueError unless the batch splits into microbatches that split over the batch axes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % microbatches or (batch_size // microbatches) % shards:
        raise ValueError(f"batch of {batch_size} rows does not split into {microbatches} microbatches of a "
                         f"multiple of data x fsdp = {shards} rows; choose microbatches dividing "
                         f"{batch_size // shards if batch_size % shards == 0 else batch_size}")


def _value_and_grad(graphdef, params, batch, microbatches: int, mesh: Mesh):
    """(mean loss over the batch's weights, its gradient), over `microbatches` sequential slices.

    The gradient is that of the weighted *sum*, divided by the total weight afterwards: with the
    batch split over devices, the total weight is a cross-device sum, and dividing the loss by
    it first would start every device's backward pass at a collective. On CPU a device that
    reaches that collective first blocks a shared pool thread until the other arrives.
    """
    sum_grad = jax.value_and_grad(lambda p, mb: _loss_terms(graphdef, p, mb), has_aux=True)
    if microbatches == 1:
        (loss_sum, weight_sum), grads = sum_grad(params, batch)
        denom = jnp.maximum(weight_sum, 1e-9)
        return loss_sum / denom, jax.tree.map(lambda g: (g / denom).astype(g.dtype), grads)

    def accumulate(carry, mb):
        loss_sum, weight_sum, grads = carry
        (l, w), g = sum_grad(params, mb)
        return (loss_sum + l, weight_sum + w, jax.tree.map(jnp.add, grads, g)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
    (loss_sum, weight_sum, grads), _ = jax.lax.scan(accumulate, init, microbatched(batch, microbatches, mesh))
    denom = jnp.maximum(weight_sum, 1e-9)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    return loss_sum / denom, grads


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh,
                    microbatches: int = 1,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`(state, batch) -> (new state, {"loss", "grad_norm"})`; the old state is donated.

    grad_norm is the global norm of the raw gradient (before any clipping inside tx).
    """

    def train_step(state: TrainState, batch: Batch):
        loss, grads = _value_and_grad(graphdef, state["params"], batch, microbatches, mesh)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1,
                     "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return _ShardedStep(train_step, mesh, donate=True, out_metrics=True)


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh,
                   ) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """`(state, batch) -> {"loss_sum", "weight_sum"}` (float32); sum over batches, then divide."""

    def eval_step(params: Any, batch: Batch):
        loss_sum, weight_sum = _loss_terms(graphdef, params, batch)
        return {"loss_sum": loss_sum, "weight_sum": weight_sum}

    step = _ShardedStep(eval_step, mesh, donate=False, out_metrics=False)
    # only the parameters go in, so a restored params-only state evaluates too
    return lambda state, batch: step(state["params"], batch)
