"""One training run: the point on a scaling curve.

AdamW with warmup then cosine decay to the run's own token budget (so every run is a finished run,
as Chinchilla requires), gradient clipping, grain batches indexed by step, orbax checkpoints and
exact resume, held-out loss at intervals, NaN/inf -> `diverged` with the step.

Exact resume rests on three facts: the batch for step s depends only on (seed, s); the state
(params, optimizer, step) is checkpointed whole; the same program is compiled on restart. So a
run killed at any point and resumed ends with the same loss as one never interrupted.
"""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from medscale.atomic import write_json, write_with
from medscale.scaling.flops import device_peak_flops, flops_per_token, mfu
from medscale.scaling.store import LeaseHeld, RunDir

OBJECTIVE_TO_LOADER = {"decoder": "next_event", "encoder": "masked_event"}


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


def make_optimizer(train: dict, total_steps: int):
    """(optax transformation, host-side learning-rate function of the step)."""
    import numpy as np

    from medscale.scaling.schedule import adamw_warmup_cosine, warmup_cosine_lr

    warmup = int(train.get("warmup_steps", max(1, round(0.05 * total_steps))))
    warmup = min(warmup, max(1, total_steps - 1))
    end_ratio = train.get("min_lr_ratio", 0.1)
    tx = adamw_warmup_cosine(lr=train["lr"], warmup_steps=warmup, total_steps=total_steps, min_lr_ratio=end_ratio,
                             weight_decay=train.get("weight_decay", 0.1), b1=train.get("b1", 0.9),
                             b2=train.get("b2", 0.95), clip=train.get("clip", 1.0))
    lr_at = lambda step: float(warmup_cosine_lr(np.float64(step), train["lr"], warmup, total_steps, end_ratio, xp=np))  # noqa: E731
    return tx, lr_at


def _checkpoint_manager(path: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(path.absolute(), options=options)


def _held_out_loss(eval_step, state, batches, place) -> float:
    loss_sum, weight_sum = 0.0, 0.0
    outs = [eval_step(state, place(b)) for b in batches]
    for out in outs:
        loss_sum += float(out["loss_sum"])
        weight_sum += float(out["weight_sum"])
    return loss_sum / max(weight_sum, 1e-9)


def train_run(run: RunDir, *, log: Callable[[str], None] | None = None,
              process_started: float | None = None) -> dict:
    """Train (or resume) the run in `run`'s folder to its token budget; returns its final metrics."""
    import jax
    import orbax.checkpoint as ocp

    from medscale.data.loader import eval_batches, train_batches
    from medscale.models.config import ModelConfig, counted_params, param_counts
    from medscale.models.options import ModelOptions
    from medscale.models.sharding import make_mesh, mesh_axes, shard_batch
    from medscale.models.step import (abstract_train_state, check_microbatches, init_train_state, make_eval_step,
                                      make_train_step)

    log = log or (lambda msg: None)
    t0 = process_started or time.time()
    timing = {"startup_s": time.time() - t0, "compile_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "ckpt_s": 0.0}
    cfg = run.config()
    model_cfg = ModelConfig.from_dict(cfg["model"])
    data_cfg, train_cfg, eval_cfg = cfg["data"], cfg["train"], cfg["eval"]
    B, L = data_cfg["batch_size"], data_cfg["seq_len"]
    total_steps = train_cfg["steps"]
    objective = OBJECTIVE_TO_LOADER[cfg["objective"]]

    options = ModelOptions.from_dict(cfg.get("options"))
    try:  # the spec checked this against the devices it expected; this is the devices the run got
        mesh = make_mesh(**mesh_axes(cfg.get("mesh"), jax.device_count()))
        check_microbatches(B, options.microbatches, mesh)
    except ValueError as err:
        raise RuntimeError(f"{run.path / 'config.yaml'}: {err} (resources.mesh / optimizer.microbatches)") from None
    tx, schedule = make_optimizer(train_cfg, total_steps)
    mngr = _checkpoint_manager(run.ckpt_dir)
    latest = mngr.latest_step()
    if latest is None:
        graphdef, state = init_train_state(model_cfg, tx, mesh, seed=train_cfg["seed"], options=options)
    else:
        graphdef, abstract = abstract_train_state(model_cfg, tx, mesh, options=options)
    train_step = make_train_step(graphdef, tx, mesh, microbatches=options.microbatches)
    eval_step = make_eval_step(graphdef, mesh)
    place = lambda batch: shard_batch(batch, mesh)  # noqa: E731

    batches = train_batches(data_cfg["token_dir"], "train", seq_len=L, batch_size=B, objective=objective,
                            seed=train_cfg["seed"], mask_prob=data_cfg.get("mask_prob", 0.15))
    held_out = list(eval_batches(data_cfg["token_dir"], eval_cfg.get("split", "tuning"), seq_len=L,
                                 batch_size=B, objective=objective, n_batches=eval_cfg["batches"]))

    start_step = 0
    curve: list[dict] = []
    if latest is not None:
        t = time.time()
        state = mngr.restore(latest, args=ocp.args.StandardRestore(abstract))
        start_step = int(latest)
        timing["ckpt_s"] += time.time() - t
        if run.curve_path.exists():
            curve = [r for r in pd.read_csv(run.curve_path).to_dict("records") if r["step"] <= start_step]
        log(f"resumed from step {start_step}/{total_steps}")

    counts = param_counts(model_cfg)
    n_counted = counted_params(model_cfg, cfg.get("param_count"))
    flops = flops_per_token(model_cfg, L, cfg.get("param_count"))
    tokens_per_step = B * L
    eval_every = max(1, eval_cfg.get("every_steps") or math.ceil(total_steps / max(1, eval_cfg.get("n_evals", 8))))
    ckpt_every = max(1, cfg.get("checkpoint", {}).get("every_steps", 200))

    def record_eval(step: int, train_loss: float | None) -> float:
        t = time.time()
        loss = _held_out_loss(eval_step, state, held_out, place)
        timing["eval_s"] += time.time() - t
        tokens = step * tokens_per_step
        curve.append({"step": step, "tokens": tokens, "compute": flops.six_n * tokens,
                      "loss": loss, "train_loss": train_loss, "lr": schedule(max(step - 1, 0))})
        frame = pd.DataFrame(curve)
        write_with(run.curve_path, lambda p: frame.to_csv(p, index=False))
        return loss

    def check_finite(step: int, loss_value: float) -> None:
        if not math.isfinite(loss_value):
            raise Diverged(step, loss_value)

    step = start_step
    pending_loss = None  # loss of the step before the one in flight: checked without stalling
    last_train_loss = None
    t_loop = time.time()
    in_loop_other = 0.0
    while step < total_steps:
        batch = place(batches[step])
        state, metrics = train_step(state, batch)
        if step == start_step:
            last_train_loss = float(metrics["loss"])  # the first step in a process includes compilation
            check_finite(step + 1, last_train_loss)
            timing["compile_s"] = time.time() - t_loop
        elif pending_loss is not None:
            last_train_loss = float(pending_loss)
            check_finite(step, last_train_loss)
        pending_loss = metrics["loss"]
        step += 1
        do_eval = step % eval_every == 0 or step == total_steps
        do_ckpt = step % ckpt_every == 0 or step == total_steps
        if do_eval or do_ckpt:
            last_train_loss = float(pending_loss)
            check_finite(step, last_train_loss)
            t = time.time()
            if do_eval:
                record_eval(step, last_train_loss)
            if do_ckpt:
                tc = time.time()
                mngr.save(step, args=ocp.args.StandardSave(state))
                timing["ckpt_s"] += time.time() - tc
            in_loop_other += time.time() - t
            log(f"step {step}/{total_steps} train_loss {last_train_loss:.4f}")
    loop_s = time.time() - t_loop
    t = time.time()
    mngr.wait_until_finished()
    mngr.close()
    timing["ckpt_s"] += time.time() - t
    timing["train_s"] = max(0.0, loop_s - in_loop_other - timing["compile_s"])

    if not curve or curve[-1]["step"] != total_steps:
        record_eval(total_steps, last_train_loss)
    steps_timed = max(0, step - start_step - 1)
    tokens_per_sec = steps_timed * tokens_per_step / timing["train_s"] if steps_timed and timing["train_s"] > 0 else None
    peak, peak_source = device_peak_flops()
    tokens = total_steps * tokens_per_step
    return {
        "loss": curve[-1]["loss"],
        "train_loss": last_train_loss,
        "params": n_counted,
        "param_count": cfg.get("param_count", "non_embedding"),
        "params_non_embedding": counts.non_embedding,
        "params_total": counts.total,
        "tokens": tokens,
        "steps": total_steps,
        "compute": flops.six_n * tokens,  # C = 6ND under the run's parameter convention
        "flops_full": flops.full * tokens,
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu(tokens_per_sec, model_cfg, L, peak * jax.device_count()) if tokens_per_sec else None,
        "peak_flops": peak * jax.device_count(),
        "peak_source": peak_source,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "resumed_from_step": start_step,
        **{f"time_{k}": v for k, v in timing.items()},
    }


def execute_run(run: RunDir, *, stale_after: float = 60.0, log: Callable[[str], None] | None = None,
                process_started: float | None = None) -> str:
    """Take the run's lease, train it, record the outcome. Returns the run's state afterwards.

    Returns "leased" without touching anything when another live process holds the run.
    A failure is recorded in status.json and re-raised, so a scheduler sees it too.
    """
    if run.state() in ("done", "diverged"):
        return run.state()
    try:
        lease = run.acquire_lease(stale_after=stale_after)
    except LeaseHeld:
        return "leased"
    with lease:
        status = run.status()
        if status["state"] in ("done", "diverged"):
            return status["state"]
        run.set_status("running", attempts=int(status.get("attempts", 0)) + 1, started_at=time.time(),
                       error=None)
        try:
            metrics = train_run(run, log=log, process_started=process_started)
        except Diverged as err:
            run.set_status("diverged", diverged_step=err.step, error=str(err))
            return "diverged"
        except BaseException as err:
            run.set_status("failed", error="".join(traceback.format_exception_only(type(err), err)).strip(),
                           traceback=traceback.format_exc()[-4000:])
            raise
        write_json(run.metrics_path, metrics)
        run.set_status("done", finished_at=time.time())
        return "done"
