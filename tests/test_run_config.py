"""The typed run config: identity marked on its fields, run ids unchanged, read-only, old configs read."""
import dataclasses

import pytest

from medscale.models.config import ModelConfig
from medscale.scaling.run.run_config import (CheckpointConfig, ConfigKeyError, DataConfig, EvalConfig, RunConfig,
                                             TrainConfig, identity_of)
from medscale.scaling.sweep.step_dir import identity_hash
from medscale.scaling.sweep.store import config_hash, run_id

MODEL = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, causal=True)


def _run(**train) -> RunConfig:
    return RunConfig(model=MODEL, objective="decoder", sweep="s", budget=None, param_count="non_embedding",
                     data=DataConfig(token_dir="/somewhere/tokens", dataset_id="abc", seq_len=16, batch_size=4,
                                     mask_prob=0.15),
                     train=TrainConfig(lr=1e-3, tokens=640, steps=10, seed=0, lr_multiplier=1.0, warmup_steps=1,
                                       **train),
                     eval=EvalConfig(n_evals=2, batches=1, split="tuning"),
                     checkpoint=CheckpointConfig(every_steps=5, grace_seconds=25.0))


def test_the_hash_covers_exactly_the_fields_marked_identity():
    run = _run()
    # what the store hashed before the fields were typed (store.py's key lists of format 1)
    body = run.to_dict()
    old = {k: body[k] for k in ("sweep", "objective", "budget", "model", "param_count", "train", "eval")}
    old["data"] = {k: body["data"][k] for k in ("dataset_id", "seq_len", "batch_size", "mask_prob")}
    old["checkpoint"] = {"every_steps": body["checkpoint"]["every_steps"]}
    assert config_hash(run) == identity_hash(old) == config_hash(body)
    assert run_id(run) == f"decoder-{identity_hash(old)}"
    # settings change nothing; identity fields change the id
    moved = run.replace(data={"token_dir": "/elsewhere"}, checkpoint={"every_minutes": 5.0, "grace_seconds": 60.0},
                        mesh={"data": 1, "fsdp": 1, "tensor": 1})
    assert run_id(moved) == run_id(run)
    for changed in (run.replace(train={"lr": 2e-3}), run.replace(data={"train_fraction": 0.5}),
                    run.replace(eval={"batches": 2}), run.replace(checkpoint={"every_steps": 6}),
                    run.replace(options={"remat": "full"})):
        assert run_id(changed) != run_id(run)
    marked = {f.name for f in dataclasses.fields(DataConfig) if f.metadata["identity"]}
    assert marked == {"dataset_id", "seq_len", "batch_size", "mask_prob", "train_fraction"}


def test_optional_fields_left_out_keep_ids_and_the_dict_form_round_trips():
    run = _run()
    body = run.to_dict()
    assert "train_fraction" not in body["data"] and "options" not in body and "mesh" not in body
    assert "schedule" not in body["train"] and "fork_steps" not in body["checkpoint"]
    assert RunConfig.coerce(body) == run and RunConfig.coerce(body).to_dict() == body
    wsd = run.replace(train={"schedule": "wsd", "cooldown_fraction": 0.2, "cooldown_shape": "linear",
                             "parent": "decoder-0123456789ab", "fork_step": 8})
    assert wsd.train.fork == ("decoder-0123456789ab", 8) and wsd.trained_steps == 2
    assert RunConfig.coerce(wsd.to_dict()) == wsd
    assert identity_of(wsd.to_dict())["train"]["parent"] == "decoder-0123456789ab"


def test_it_is_read_only_and_reads_as_its_dict_form():
    run = _run()
    assert run["train"]["steps"] == 10 and run.get("mesh") is None and dict(run)["model"]["d_model"] == 16
    run["train"]["lr"] = 1.0  # a section read as a mapping is a copy: the config changes only through replace()
    assert run.train.lr == 1e-3 and run["train"]["lr"] == 1e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.lr = 1.0


def test_a_config_of_an_older_format_is_read_and_an_unknown_key_is_named():
    older = {"model": MODEL.to_dict(), "objective": "encoder", "sweep": "s", "budget": 1e12,
             "data": {"token_dir": "/t", "dataset_id": "abc", "seq_len": 16, "batch_size": 4},
             "train": {"lr": 1e-3, "tokens": 640, "steps": 10, "seed": 1}, "checkpoint": None}
    run = RunConfig.coerce(older)
    assert run.data.mask_prob == 0.15 and run.param_count == "non_embedding" and run.checkpoint.every_steps == 200
    assert run.eval.split == "tuning" and run.train.warmup_steps is None
    with pytest.raises(ConfigKeyError, match=r"train: unknown key\(s\) \['lr_schedule'\]"):
        RunConfig.coerce({**older, "train": {**older["train"], "lr_schedule": "cosine"}})
    with pytest.raises(ConfigKeyError, match="missing key"):
        RunConfig.coerce({k: v for k, v in older.items() if k != "train"})
