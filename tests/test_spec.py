"""Sweep specs: malformed ones are refused with a message naming the key and value, and launch
nothing; good ones expand into the grid the user wrote."""
import math

import pytest
import yaml
from typer.testing import CliRunner

from medscale.scaling.cli import app
from medscale.scaling.plan.flops import flops_per_token
from medscale.models.config import ModelConfig, counted_params
from medscale.scaling.sweep.spec import SpecError, expand, load_spec, parse_spec
from medscale.scaling.sweep.store import config_hash

GOOD = {
    "name": "t",
    "objective": "decoder",
    "dataset": {"simulator": {"subjects": 100, "seed": 0}},
    "model": {"seq_len": 32},
    "grid": {"mode": "isoflop", "compute": ["1e11", "3e11"], "params": ["20k", "80k", "320k"]},
    "optimizer": {"batch_size": 4},
}


def _with(path: str, value):
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec


DELETE = object()

# (mutation, text the error must contain)
MALFORMED = [
    (("objective", "gpt"), ["objective", "'decoder'", "'encoder'", "gpt"]),
    (("grid.mode", "isoflops"), ["grid", "isoflops", "ladder"]),
    (("grid.compute", ["1e11", "-5"]), ["grid.compute", "positive"]),
    (("grid.params", ["20k", "lots"]), ["grid.params", "item [1]", "lots"]),
    (("optimizer.batch_size", 0), ["optimizer.batch_size", "greater than 0"]),
    (("optimizer.learning_rate", 0.1), ["optimizer.learning_rate", "unknown key"]),
    (("dataset", {"simulator": {"subjects": 10}, "meds": "/x"}), ["dataset", "exactly one"]),
    (("dataset.meds_path", "/x"), ["dataset.meds_path", "unknown key"]),
    (("name", DELETE), ["name", "required key is missing"]),
    (("optimizer.lr_multipliers", [1.0, -2.0]), ["optimizer.lr_multipliers", "> 0"]),
    (("grid.params", [{"d_model": 60, "n_layers": 2, "n_heads": 7}, "80k"]), ["grid.params[0]", "heads"]),
    (("grid.compute", ["1e3"]), ["only", "optimizer steps"]),
    (("model.seq_len", 1), ["model.seq_len", "greater than 1"]),
    (("downstream", {"tasks": ["no_such_task"]}), ["downstream.tasks", "no_such_task"]),
    (("downstream", {"tasks": ["med_start_30d"], "modes": ["probe", "oracle"]}), ["downstream.modes", "oracle"]),
]


@pytest.mark.parametrize("mutation,expected", MALFORMED, ids=[m[0][0] + ":" + str(m[0][1])[:12] for m in MALFORMED])
def test_malformed_spec_is_refused_with_a_clear_message(tmp_path, mutation, expected):
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text(yaml.safe_dump(_with(*mutation)))
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(spec_path), "--out", str(out_dir)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "bad.yaml" in text
    for fragment in expected:
        assert fragment in text, (fragment, text)
    assert "Traceback" not in result.output
    assert not (out_dir / "runs").exists(), "a refused spec must launch nothing"
    assert not (out_dir / "datasets").exists(), "a refused spec must not even prepare data"


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\ngrid: [1, 2\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_spec(p)


def test_missing_meds_path_is_refused(tmp_path):
    raw = _with("dataset", {"meds": str(tmp_path / "nowhere")})
    with pytest.raises(SpecError, match="dataset.meds.*does not exist"):
        parse_spec(raw, source="s.yaml")


def test_isoflop_expansion_derives_tokens_from_compute():
    spec = parse_spec(GOOD)
    runs = expand(spec, token_dir="/t", vocab_size=500, dataset_id="d")
    assert len(runs) == 2 * 3
    for r in runs:
        cfg = ModelConfig.from_dict(r["model"])
        per_token = flops_per_token(cfg, 32).six_n
        want = r["budget"] / per_token
        step_tokens = 4 * 32
        assert abs(r["train"]["tokens"] - want) <= step_tokens
        assert r["train"]["steps"] == math.ceil(want / step_tokens)
    # within a budget, bigger models get fewer tokens
    first = sorted((r for r in runs if r["budget"] == 1e11), key=lambda r: r["model"]["d_model"] * r["model"]["n_layers"])
    assert first[0]["train"]["tokens"] > first[-1]["train"]["tokens"]


def test_ladder_with_lr_axis_and_seeds_and_width_rule():
    raw = _with("grid", {"mode": "ladder", "params": ["20k", "80k"], "tokens": ["40k", "80k"]})
    raw["seeds"] = [0, 1]
    raw["optimizer"] = {"batch_size": 4, "lr": 1e-3, "lr_multipliers": [0.5, 2.0], "lr_scaling": "inverse_width",
                        "base_width": 64}
    runs = expand(parse_spec(raw), token_dir="/t", vocab_size=500, dataset_id="d")
    assert len(runs) == 2 * 2 * 2 * 2
    for r in runs:
        assert r["train"]["lr"] == pytest.approx(1e-3 * 64 / r["model"]["d_model"] * r["train"]["lr_multiplier"])


def test_duplicate_grid_points_are_refused():
    raw = _with("grid.params", ["20k", "80k", "10k"])
    with pytest.raises(SpecError, match="grid.params: two entries give the same model"):
        expand(parse_spec(raw), token_dir="/t", vocab_size=500, dataset_id="d")


def test_dry_run_prints_plan_and_trains_nothing(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    result = CliRunner().invoke(app, ["sweep", str(p), "--out", str(tmp_path / "o"), "--dry-run"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "6 runs" in result.output and "est. time" in result.output
    assert not (tmp_path / "o" / "runs").exists()


def test_total_parameter_convention_sizes_and_tokens():
    from medscale.models.config import param_counts

    raw = _with("model", {"seq_len": 32, "param_count": "total"})
    raw["grid"] = {"mode": "isoflop", "compute": ["1e12"], "params": ["150k", "600k"]}
    runs = expand(parse_spec(raw), token_dir="/t", vocab_size=500, dataset_id="d")
    for r, target in zip(runs, [150e3, 600e3]):
        total = param_counts(ModelConfig.from_dict(r["model"])).total
        assert abs(math.log(total / target)) < math.log(1.6), (total, target)
        assert abs(r["train"]["tokens"] - 1e12 / (6 * total)) <= 4 * 32
        assert r["param_count"] == "total"


def test_isoflop_window_keeps_only_points_with_tokens_per_param_inside():
    depths = [{"d_model": 32, "n_layers": n, "n_heads": 1} for n in (1, 2, 4, 8, 16)]  # N ~ 13k .. 214k
    raw = _with("grid", {"mode": "isoflop", "compute": ["1e11", "1e12"], "params": depths,
                         "tokens_per_param": [1, 100]})
    runs = expand(parse_spec(raw), token_dir="/t", vocab_size=500, dataset_id="d")
    full = expand(parse_spec(_with("grid", {k: v for k, v in raw["grid"].items() if k != "tokens_per_param"})),
                  token_dir="/t", vocab_size=500, dataset_id="d")
    ratio = lambda r: (r["budget"] / 6 / counted_params(ModelConfig.from_dict(r["model"]), "non_embedding")) / \
        counted_params(ModelConfig.from_dict(r["model"]), "non_embedding")  # noqa: E731
    assert runs and all(1 <= ratio(r) <= 100 for r in runs)
    # what was left out lies outside the window: the smallest sizes at the large budget, the largest at the small
    assert sorted(map(config_hash, runs)) == sorted(config_hash(r) for r in full if 1 <= ratio(r) <= 100)
    points = lambda rs: {(r["budget"], r["model"]["n_layers"]) for r in rs}  # noqa: E731
    assert points(full) - points(runs) == {(1e12, 1), (1e12, 2), (1e11, 16)}


@pytest.mark.parametrize("window, match", [
    ([100, 10], r"grid.tokens_per_param: give \[min, max\]"),
    ([1, 2], r"grid.tokens_per_param: \[1, 2\] keeps 0 size\(s\) at grid.compute\[0\]"),
    ([0.01, 1e6], None)])
def test_isoflop_window_errors_name_the_key(window, match):
    depths = [{"d_model": 32, "n_layers": n, "n_heads": 1} for n in (1, 2, 4)]
    raw = _with("grid", {"mode": "isoflop", "compute": ["1e11"], "params": depths, "tokens_per_param": window})
    if match is None:
        assert len(expand(parse_spec(raw), token_dir="/t", vocab_size=500, dataset_id="d")) == 3
        return
    with pytest.raises(SpecError, match=match):
        expand(parse_spec(raw, source="s.yaml"), token_dir="/t", vocab_size=500, dataset_id="d")
