"""Export a trained run outside medscale's orbax layout: `medscale export RUN_DIR --out DIR`.

    DIR/model.safetensors   every parameter, named by its path in the Flax model ("blocks.0.attn.q_DxHxK")
    DIR/config.json         the model config (models/config.py ModelConfig), objective, run id, N, tokens, and
                            "training": the checkpoint's step, the run's steps and state, and whether it finished
    DIR/vocab.json          token -> id (the tokenizer's vocabulary)
    DIR/tokenizer.json      the fitted tokenizer itself (data/tokenizer.py Tokenizer.load reads it)

safetensors is written here directly (no torch or safetensors package needed): an 8-byte little-endian
header length, a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
padded with spaces to a multiple of 8 bytes, then the raw little-endian bytes of every tensor, in header
order. Any safetensors reader (the `safetensors` package, Hugging Face tools) reads the file.

DIR must be absent, empty or an earlier export (a `.medscale-store.json` marker of kind `export`), like every
medscale output. A run that has not finished (killed, preempted, diverged, still training) is refused unless
`--partial` is given; then config.json and the safetensors metadata say `finished: false` and the step.

Loading back into the Flax model:

    from medscale.scaling.run.export import load_exported
    model, tokenizer, config = load_exported("DIR")          # a models.transformer.Transformer (nnx)
    logits_BxLxV = model(tokens_BxL, segment_ids_BxL)
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from medscale.atomic import claim_dir, write_json, write_with
from medscale.models.config import ModelConfig, param_counts
from medscale.scaling.errors import UserError
from medscale.scaling.sweep.store import RunDir

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int32": "I32",
           "int64": "I64", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_NUMPY = {v: k for k, v in _DTYPES.items()}


def _path_name(path) -> str:
    parts = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", None)))
        if key in ("value", "raw_value") and hasattr(entry, "name"):
            continue   # the Variable's own attribute, not part of the parameter's name
        parts.append(str(key))
    return ".".join(parts)


def flat_params(params) -> dict[str, np.ndarray]:
    """name -> host array, for a pure dict or an nnx.State of parameters."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_path_name(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def write_safetensors(path: Path | str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    header: dict = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = _DTYPES.get(array.dtype.name)
        if dtype is None:
            raise ValueError(f"{name}: dtype {array.dtype} has no safetensors code")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)

    return write_with(path, write)


def read_safetensors(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array, metadata) of a safetensors file."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8: 8 + n])
    metadata = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _NUMPY[info["dtype"]]
        if dtype == "bfloat16":
            import ml_dtypes

            np_dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            np_dtype = np.dtype(dtype).newbyteorder("<")
        out[name] = np.frombuffer(blob[base + begin: base + end], dtype=np_dtype).reshape(info["shape"]).copy()
    return out, metadata


def export_run(run_dir: Path | str, out_dir: Path | str, *, partial: bool = False) -> tuple[Path, dict]:
    """Write a run's parameters, config and tokenizer to `out_dir`; returns (out_dir, the "training" record:
    the checkpoint's step, the run's steps and state, whether it finished). `out_dir` follows medscale's output
    rules (medscale.atomic.claim_dir: absent, empty, or an earlier export). A run that did not finish is
    refused unless `partial`: its weights are an intermediate checkpoint, which an export file, read
    without its run folder, would otherwise pass off as the trained model."""
    from medscale.data.tokenizer import Tokenizer
    from medscale.scaling.downstream.model import load_run_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give runs/<run_id> of a run store")
    run = RunDir(run_dir)
    try:
        model = load_run_model(run)
    except FileNotFoundError as err:
        raise UserError(f"{err}; train the run first (medscale train / sweep)") from None
    training = training_record(run, model.step)
    if not training["finished"] and not partial:
        raise UserError(f"{run_dir}: {_partial_words(run.run_id, training)}, so its weights are partial. Finish "
                        "it first (rerun the medscale train or sweep command that started it: it resumes), or pass "
                        f"--partial to export the step-{training['step']} weights anyway (config.json then "
                        "records the step and finished: false).")
    out = claim_dir(out_dir, "export")
    counts = param_counts(model.cfg)
    config = {"format": "medscale-export", "format_version": 1, "run_id": run.run_id, "objective": model.objective,
              "model": model.cfg.to_dict(), "params_non_embedding": counts.non_embedding, "params_total": counts.total,
              "training": training,
              "metrics": {k: v for k, v in (run.metrics() or {}).items() if k in ("loss", "tokens", "events", "compute")}}
    write_safetensors(out / "model.safetensors", flat_params(model.params),
                      {"format": "medscale", "run_id": run.run_id, "objective": model.objective,
                       "step": training["step"], "finished": str(training["finished"]).lower()})
    write_json(out / "config.json", config)
    tokenizer = Tokenizer.load(model.token_dir)
    write_json(out / "vocab.json", tokenizer.token_id)
    source = Path(model.token_dir) / "tokenizer" / "tokenizer.json"
    write_with(out / "tokenizer.json", lambda tmp: shutil.copyfile(source, tmp))
    return out, training


def training_record(run, step: int) -> dict:
    """What an export records about the weights: the checkpoint's step, the run's planned steps, its state, and
    whether it finished (state done)."""
    state = run.state()
    return {"step": int(step), "steps": int(run.run_config().train.steps), "state": state,
            "finished": state == "done"}


def _partial_words(run_id: str, training: dict) -> str:
    return (f"run {run_id} did not finish (state {training['state']}; its latest checkpoint is step "
            f"{training['step']:,} of {training['steps']:,})")


def partial_warning(run_id: str, training: dict) -> str:
    """The warning for an export of an unfinished run's weights."""
    return (f"{_partial_words(run_id, training)}: exported the partial weights of step {training['step']:,}; "
            "config.json records \"training\": {\"finished\": false, ...}")


def load_exported(export_dir: Path | str):
    """(Flax Transformer with the exported parameters, its Tokenizer, config.json as a dict)."""
    import jax.numpy as jnp
    from flax import nnx

    from medscale.data.tokenizer import Tokenizer
    from medscale.models.transformer import Transformer

    folder = Path(export_dir)
    config = json.loads((folder / "config.json").read_text())
    cfg = ModelConfig.from_dict(config["model"])
    tensors, _ = read_safetensors(folder / "model.safetensors")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    names = [_path_name(p) for p, _ in leaves]
    missing = sorted(set(names) - set(tensors))
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ValueError(f"{folder}/model.safetensors does not match the model config (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for (path, leaf), name in zip(leaves, names):
        if tuple(tensors[name].shape) != tuple(leaf.shape):
            raise ValueError(f"{name}: shape {tensors[name].shape} in the file, {leaf.shape} in the model")
    filled = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(tensors[n]) for n in names])
    nnx.replace_by_pure_dict(state, filled)
    return nnx.merge(graphdef, state), Tokenizer.load(folder / "tokenizer.json"), config
