"""A run's pretrained model for downstream use: load it, embed histories, fine-tune it or its architecture.

Loading: the model section of runs/<id>/config.yaml gives the `ModelConfig`; the latest orbax checkpoint
under runs/<id>/ckpt/ holds the train state {"step", "params", "opt_state"} saved by scaling/run/train.py. It
is restored into `abstract_train_state(...)` (the same optimizer structure, rebuilt from the run's train
section) on a one-device mesh, and only the params are kept.

Fine-tuning (`mode='finetune'`) is linear-probe-then-fine-tune (LP-FT): a head initialised from the linear
probe on the pooled representation (models/rollout.pooled: last position for decoders, mean for encoders),
then every parameter trained with AdamW, keeping the best state on held-back subjects (see
`finetune_and_predict`);
`mode='scratch'` runs the same schedule and early stopping from a fresh initialisation of the same
architecture (zero head, no probe). Binary tasks use the logistic loss, regression the squared error of the
standardised target.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from medscale.models.config import ModelConfig, counted_params
from medscale.scaling.downstream.baselines import probe_head
from medscale.scaling.sweep.store import RunDir

EMBED_BATCH = 64


@dataclass
class LoadedModel:
    run_id: str
    objective: str
    cfg: object            # models.config.ModelConfig
    graphdef: object
    params: dict
    n_params: int          # N in the run's convention (non-embedding or total), as in the results table
    compute: float
    token_dir: str
    step: int | None = None   # the checkpoint's training step


def load_run_model(run: RunDir) -> LoadedModel:
    # JAX (and what imports it) only inside functions: importing this module must not start JAX before
    # runtime.configure_process pins the CPUs, and orbax and Flax are slow to import for the CLI's fast paths
    import jax
    import orbax.checkpoint as ocp

    from medscale.models.sharding import make_mesh
    from medscale.models.step import abstract_train_state
    from medscale.scaling.run.train import make_optimizer

    cfg = run.config()
    model_cfg = ModelConfig.from_dict(cfg["model"])
    mesh = make_mesh(devices=jax.devices()[:1])
    tx, _ = make_optimizer(cfg["train"], cfg["train"]["steps"])
    graphdef, abstract = abstract_train_state(model_cfg, tx, mesh)
    mngr = ocp.CheckpointManager(run.ckpt_dir.absolute())
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"run {run.run_id} has no checkpoint under {run.ckpt_dir}")
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    mngr.close()
    metrics = run.metrics() or {}
    n = int(metrics.get("params") or counted_params(model_cfg, cfg.get("param_count")))
    return LoadedModel(run.run_id, cfg["objective"], model_cfg, graphdef, state["params"], n,
                       float(metrics.get("compute", np.nan)), cfg["data"]["token_dir"], int(step))


def fresh_params(model_cfg, seed: int) -> tuple[object, dict]:
    from flax import nnx

    from medscale.models.transformer import Transformer

    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def embed(model: LoadedModel, tokens_NxL: np.ndarray, lengths_N: np.ndarray) -> np.ndarray:
    """Pooled representations [N, D] (float32), in fixed-size batches (one compilation)."""
    return _embed_with(model.graphdef, model.params, model.cfg.d_model, tokens_NxL, lengths_N)


def _pad_batch(tokens, lengths, size):
    n = len(lengths)
    if n == size:
        return tokens, lengths
    tok = np.zeros((size, tokens.shape[1]), np.int32)
    tok[:n] = tokens
    ln = np.full(size, 3, np.int64)  # dummy rows: a valid 3-token prefix, never read back
    ln[:n] = lengths
    tok[n:, :3] = tokens[0, :3] if n else 2
    return tok, ln


@dataclass(frozen=True)
class FinetuneRecipe:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    val_fraction: float = 0.2   # subjects of the fit pool held back for early stopping
    evals: int = 4              # checks on the held-back subjects over the schedule
    patience: int = 2           # stop after this many checks without improvement


@lru_cache(maxsize=32)
def _train_fns(graphdef, kind: str, recipe: "FinetuneRecipe"):
    """(predict, step, tx), jitted once per architecture, task kind and recipe (not once per call)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from medscale.models.rollout import pooled

    def predict(params, head, tokens, lengths):
        rep_BxD = pooled(nnx.merge(graphdef, params), tokens, lengths)
        return rep_BxD @ head["w_D"] + head["b"]

    def loss_fn(trainable, tokens, lengths, y):
        out_B = predict(trainable["params"], trainable["head"], tokens, lengths)
        if kind == "binary":
            return optax.sigmoid_binary_cross_entropy(out_B, y).mean()
        return jnp.mean((out_B - y) ** 2)

    sched = optax.warmup_cosine_decay_schedule(0.0, recipe.lr, max(1, recipe.steps // 10), max(2, recipe.steps),
                                               recipe.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=recipe.weight_decay))

    @jax.jit
    def step(trainable, opt_state, tokens, lengths, y):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, tokens, lengths, y)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return jax.jit(predict), step, tx


def _embed_with(graphdef, params, d_model: int, tokens_NxL, lengths_N) -> np.ndarray:
    import jax.numpy as jnp

    from medscale.models.rollout import pooled_jit

    out = []
    for i in range(0, len(lengths_N), EMBED_BATCH):
        tok, ln = _pad_batch(tokens_NxL[i:i + EMBED_BATCH], lengths_N[i:i + EMBED_BATCH], EMBED_BATCH)
        out.append(np.asarray(pooled_jit(graphdef, params, jnp.asarray(tok), jnp.asarray(ln)))[
            : min(EMBED_BATCH, len(lengths_N) - i)])
    return np.concatenate(out) if out else np.zeros((0, d_model), np.float32)


def _split_subjects(groups: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    subjects = rng.permutation(np.unique(groups))
    n_val = int(round(fraction * subjects.size))
    val = np.isin(groups, subjects[:n_val])
    return np.flatnonzero(~val), np.flatnonzero(val)


def _selection_score(kind: str, y: np.ndarray, out: np.ndarray) -> float:
    """Higher is better: minus the log-loss of the logits for binary tasks (a proper score, far less noisy
    than AUROC on a few hundred held-back rows with few cases), minus the squared error for regression."""
    if kind == "binary":
        return -float(np.mean(np.logaddexp(0.0, out) - y * out))
    return -float(np.mean((out - y) ** 2))


def finetune_and_predict(graphdef, params, model_cfg, kind: str, fit_tokens, fit_lengths, y_fit,
                         test_tokens, test_lengths, recipe: FinetuneRecipe, seed: int, groups=None, *,
                         linear_probe_first: bool = True, Z_fit=None, probe_score=None) -> np.ndarray:
    """Linear probe, then fine-tune (LP-FT, Kumar et al. 2022): return test predictions (probabilities for
    binary tasks, values for regression).

    The fit rows are split by subject (`groups`) into a training part and `val_fraction` held back. A linear
    probe on the frozen representation of the training part (baselines.probe_head, the probe mode's estimator)
    initialises the head, so fine-tuning starts where the probe ends instead of from a zero head that first
    drags the features towards it. Every weight is then trained with AdamW on a warmup-cosine schedule, and the
    held-back subjects are scored `evals` times along it (log-loss; squared error for regression): the best
    state is kept, the probe itself (step 0) included, and training stops after `patience` checks without
    improvement. When the probe wins, the result is the probe refitted on the whole fit pool, i.e. the probe
    mode's own predictions. So the fine-tuned model is never worse than its own probe on the held-back
    subjects; on test rows it can be worse only by noise. With too few held-back rows (or one class), the training part is used.

    `Z_fit` (the frozen representations of the fit rows, when the probe mode already computed them) and
    `probe_score` (the probe mode's test predictions) save recomputing them. `linear_probe_first=False` starts
    from a zero head instead (training from scratch: a probe on random features is not worth its cost)."""
    import jax

    y_fit = np.asarray(y_fit, np.float32)
    rng = np.random.default_rng(seed)
    tr, va = _train_and_held_back(y_fit, kind, groups, recipe.val_fraction, rng)
    mu, sd = _standardisation(kind, y_fit[tr])
    if linear_probe_first:
        Z_tr = (np.asarray(Z_fit)[tr] if Z_fit is not None
                else _embed_with(graphdef, params, model_cfg.d_model, fit_tokens[tr], fit_lengths[tr]))
        w, b = probe_head(Z_tr, y_fit[tr], kind, seed)
    else:
        w, b = _prior_head(kind, y_fit[tr], model_cfg.d_model)
    fns = _train_fns(graphdef, kind, recipe)
    fit = _Rows(fit_tokens, fit_lengths, (y_fit - mu) / sd)
    best_state, best_step = _finetune(fns, {"params": params, "head": _head(w, b)}, kind, recipe, rng, fit, tr, va)
    if best_step == 0 and linear_probe_first:
        # no fine-tuned state beat the probe on held-back subjects: the probe on the whole fit pool (the
        # probe mode's own result), not the one fitted to the training part only
        if probe_score is not None:
            return np.asarray(probe_score, dtype=np.float64)
        Z_all = (Z_fit if Z_fit is not None
                 else _embed_with(graphdef, params, model_cfg.d_model, fit_tokens, fit_lengths))
        w, b = probe_head(np.asarray(Z_all), y_fit, kind, seed)
        best_state = {"params": params, "head": _head(w, b)}
        if kind == "regression":
            mu, sd = _standardisation(kind, y_fit)
    raw = _outputs(fns[0], best_state, test_tokens, test_lengths)
    if kind == "binary":
        return np.asarray(jax.nn.sigmoid(raw))
    return raw * sd + mu


class _Rows(NamedTuple):
    """Fit rows: token windows, their lengths and the (standardised) target."""
    tokens: np.ndarray
    lengths: np.ndarray
    target: np.ndarray


def _train_and_held_back(y_fit: np.ndarray, kind: str, groups, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training part and of the held-back subjects (`fraction` of them); with too few
    held-back rows (or one class on either side), both are every row."""
    groups = np.arange(len(y_fit)) if groups is None else np.asarray(groups)
    tr, va = _split_subjects(groups, fraction, rng)
    if va.size < 10 or tr.size < 4 or (kind == "binary" and (np.unique(y_fit[va]).size < 2
                                                           or np.unique(y_fit[tr]).size < 2)):
        tr, va = np.arange(len(y_fit)), np.arange(len(y_fit))
    return tr, va


def _standardisation(kind: str, y: np.ndarray) -> tuple[float, float]:
    """(mean, sd) the target is standardised with: none for binary tasks."""
    return (0.0, 1.0) if kind == "binary" else (float(y.mean()), float(y.std() or 1.0))


def _prior_head(kind: str, y: np.ndarray, d_model: int) -> tuple[np.ndarray, float]:
    """A zero head whose bias predicts the base rate (binary tasks) or the mean (0 once standardised)."""
    p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    return np.zeros(d_model, np.float32), (float(np.log(p / (1 - p))) if kind == "binary" else 0.0)


def _head(w, b) -> dict:
    import jax.numpy as jnp

    return {"w_D": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def _outputs(predict, state: dict, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The head's outputs for every row, in fixed-size batches (one compilation)."""
    import jax.numpy as jnp

    out = []
    for i in range(0, len(lengths), EMBED_BATCH):
        tok, ln = _pad_batch(tokens[i:i + EMBED_BATCH], lengths[i:i + EMBED_BATCH], EMBED_BATCH)
        pred = predict(state["params"], state["head"], jnp.asarray(tok), jnp.asarray(ln))
        out.append(np.asarray(pred)[: min(EMBED_BATCH, len(lengths) - i)])
    return np.concatenate(out).astype(np.float64)


def _finetune(fns, trainable: dict, kind: str, recipe: FinetuneRecipe, rng, fit: _Rows, tr: np.ndarray,
              va: np.ndarray) -> tuple[dict, int]:
    """Train every weight of `trainable` on the rows `tr`, scoring the held-back rows `va` before training and
    `recipe.evals` times along the schedule; stop after `recipe.patience` checks without improvement. Returns
    the best state and its step (0: the state it started from)."""
    import jax.numpy as jnp

    predict, step, tx = fns

    def score(state) -> float:
        return _selection_score(kind, fit.target[va], _outputs(predict, state, fit.tokens[va], fit.lengths[va]))

    best_state, best_step = trainable, 0
    best = score(trainable)
    opt_state = tx.init(trainable)
    every = max(1, recipe.steps // max(1, recipe.evals))
    bad = 0
    B = recipe.batch_size
    for t in range(1, recipe.steps + 1):
        idx = tr[rng.integers(0, tr.size, B)]
        trainable, opt_state, _ = step(trainable, opt_state, jnp.asarray(fit.tokens[idx]),
                                       jnp.asarray(fit.lengths[idx]), jnp.asarray(fit.target[idx]))
        if t % every == 0 or t == recipe.steps:
            current = score(trainable)
            if current > best:
                best, best_state, best_step, bad = current, trainable, t, 0
            else:
                bad += 1
                if bad >= recipe.patience:
                    break
    return best_state, best_step
