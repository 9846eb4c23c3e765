"""A run's pretrained model for downstream use: load it, embed histories, fine-tune it or its architecture.

Loading: the model section of runs/<id>/config.yaml gives the `ModelConfig`; the latest orbax checkpoint
under runs/<id>/ckpt/ holds the train state {"step", "params", "opt_state"} saved by scaling/train.py. It
is restored into `abstract_train_state(...)` (the same optimizer structure, rebuilt from the run's train
section) on a one-device mesh, and only the params are kept.

Fine-tuning (`mode='finetune'`) trains every parameter of the pretrained model plus a linear head on the
pooled representation (models/rollout.pooled: last position for decoders, mean for encoders) with AdamW;
`mode='scratch'` runs the same recipe from a fresh initialisation of the same architecture. Binary tasks
use the logistic loss, regression the squared error of the standardised target.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medscale.scaling.store import RunDir

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


def load_run_model(run: RunDir) -> LoadedModel:
    import jax
    import orbax.checkpoint as ocp

    from medscale.models.config import ModelConfig, counted_params
    from medscale.models.sharding import make_mesh
    from medscale.models.step import abstract_train_state
    from medscale.scaling.train import make_optimizer

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
                       float(metrics.get("compute", np.nan)), cfg["data"]["token_dir"])


def fresh_params(model_cfg, seed: int) -> tuple[object, dict]:
    from flax import nnx

    from medscale.models.transformer import Transformer

    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def embed(model: LoadedModel, tokens_NxL: np.ndarray, lengths_N: np.ndarray) -> np.ndarray:
    """Pooled representations [N, D] (float32), in fixed-size batches (one compilation)."""
    import jax.numpy as jnp

    from medscale.models.rollout import pooled_jit

    out = []
    for i in range(0, len(lengths_N), EMBED_BATCH):
        tok, ln = _pad_batch(tokens_NxL[i:i + EMBED_BATCH], lengths_N[i:i + EMBED_BATCH], EMBED_BATCH)
        rep = pooled_jit(model.graphdef, model.params, jnp.asarray(tok), jnp.asarray(ln))
        out.append(np.asarray(rep)[: min(EMBED_BATCH, len(lengths_N) - i)])
    return np.concatenate(out) if out else np.zeros((0, model.cfg.d_model), np.float32)


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


def finetune_and_predict(graphdef, params, model_cfg, kind: str, fit_tokens, fit_lengths, y_fit,
                         test_tokens, test_lengths, recipe: FinetuneRecipe, seed: int) -> np.ndarray:
    """Train params + a linear head on (fit histories, y_fit); return test predictions (probabilities
    for binary tasks, values for regression)."""
    import jax
    import jax.numpy as jnp

    y_fit = np.asarray(y_fit, np.float32)
    mu, sd = (0.0, 1.0) if kind == "binary" else (float(y_fit.mean()), float(y_fit.std() or 1.0))
    target = (y_fit - mu) / sd
    rng = np.random.default_rng(seed)
    bias = 0.0
    if kind == "binary":
        p = float(np.clip(y_fit.mean(), 1e-3, 1 - 1e-3))
        bias = float(np.log(p / (1 - p)))
    head = {"w_D": jnp.zeros((model_cfg.d_model,), jnp.float32), "b": jnp.asarray(bias, jnp.float32)}
    trainable = {"params": params, "head": head}
    predict, step, tx = _train_fns(graphdef, kind, recipe)
    opt_state = tx.init(trainable)
    B = recipe.batch_size
    for _ in range(recipe.steps):
        idx = rng.integers(0, len(y_fit), B)
        trainable, opt_state, _ = step(trainable, opt_state, jnp.asarray(fit_tokens[idx]),
                                       jnp.asarray(fit_lengths[idx]), jnp.asarray(target[idx]))
    out = []
    for i in range(0, len(test_lengths), EMBED_BATCH):
        tok, ln = _pad_batch(test_tokens[i:i + EMBED_BATCH], test_lengths[i:i + EMBED_BATCH], EMBED_BATCH)
        pred = predict(trainable["params"], trainable["head"], jnp.asarray(tok), jnp.asarray(ln))
        out.append(np.asarray(pred)[: min(EMBED_BATCH, len(test_lengths) - i)])
    raw = np.concatenate(out).astype(np.float64)
    if kind == "binary":
        return np.asarray(jax.nn.sigmoid(raw))
    return raw * sd + mu
