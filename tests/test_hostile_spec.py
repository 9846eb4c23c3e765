"""Hostile sweep specs (issue 19): what silently changed results or blew up is now refused with one
message naming the key. Each row of the table is a spec edit, the error expected, and the key blamed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_spec
from medscale.scaling.pipeline import DRY_RUN_VOCAB
from medscale.scaling.sweep.spec import MAX_RUNS, SpecError, expand, load_spec, parse_spec

BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["name: *i"])


def _spec_text(tmp_path: Path, **overrides) -> str:
    (tmp_path / "meds").mkdir(exist_ok=True)
    return yaml.safe_dump(tiny_spec(Path("meds"), **overrides), sort_keys=False)


def _load(tmp_path: Path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return load_spec(path)


def _expand(tmp_path: Path, text: str) -> list[dict]:
    spec = _load(tmp_path, text)
    return expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="", source="spec.yaml")


# (case, how the spec text is made, the error expected)
LOAD_CASES = [
    ("duplicate top-level key", lambda t: t + "name: other\n", r"key 'name' appears twice \(first at line 1\)"),
    ("duplicate nested key", lambda t: t.replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.3\n"),
     r"key 'lr' appears twice"),
    ("YAML alias bomb", lambda t: BILLION_LAUGHS, r"aliases \(\*name\) expand to more than 10,000 values"),
    ("batch_size: true", lambda t: t.replace("batch_size: 8", "batch_size: true"),
     r"optimizer.batch_size: Input should be a valid integer .*got True"),
    ("batch_size: 8.5", lambda t: t.replace("batch_size: 8", "batch_size: 8.5"), r"optimizer.batch_size"),
    ("seq_len: '32'", lambda t: t.replace("seq_len: 32", "seq_len: '32'"), r"model.seq_len"),
    ("lr: true", lambda t: t.replace("lr: 0.003", "lr: true"), r"optimizer.lr: expected a number, got True"),
    ("cpus: yes", lambda t: t.replace("cpus: 1", "cpus: yes"), r"resources.cpus"),
    ("huge value is cut", lambda t: t.replace("name: tiny", "name: '" + "x " * 100_000 + "'"),
     r"name: .*\.\.\. \(200,002 characters\)"),
    ("grid over the limit", lambda t: t.replace("tokens:\n  - 15360", "tokens: [" + ", ".join(
        str(15360 + i) for i in range(MAX_RUNS + 1)) + "]"), r"expands to 2,001 runs .*--allow-large-grid"),
]


@pytest.mark.parametrize("case,make,error", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_hostile_spec_is_refused_with_a_short_message(tmp_path, case, make, error):
    text = make(_spec_text(tmp_path))
    with pytest.raises(SpecError, match=error) as info:
        _load(tmp_path, text)
    assert len(str(info.value)) < 2000, "the rejected value must be shown truncated"


def test_spec_accepts_numbers_in_every_form_yaml_gives_them(tmp_path):
    text = _spec_text(tmp_path).replace("lr: 0.003", "lr: 3e-3")  # YAML 1.1 reads 3e-3 as a string
    spec = _load(tmp_path, text)
    assert spec.optimizer.lr == pytest.approx(3e-3) and spec.optimizer.batch_size == 8


def test_large_grid_loads_when_allowed(tmp_path):
    text = _spec_text(tmp_path).replace("tokens:\n  - 15360", "tokens: [" + ", ".join(
        str(15360 * (i + 1)) for i in range(MAX_RUNS + 1)) + "]")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert len(load_spec(path, max_runs=None).grid.tokens) == MAX_RUNS + 1


# duplicate runs: (case, overrides, the key blamed)
DUPLICATE_CASES = [
    ("repeated seed", {"seeds": [0, 1, 0]}, r"seeds: seed 0 is listed twice \(items \[0\] and \[2\]\)"),
    ("repeated token budget", {"grid.tokens": [15360, 15360]}, r"grid.tokens: items \[0\] and \[1\]"),
    ("token budgets one step apart", {"grid.tokens": [15360, 15200]}, r"grid.tokens: items \[0\] and \[1\]"),
    ("repeated compute budget", {"grid": {"mode": "isoflop", "compute": ["2e9", "2e9"], "params": [
        {"d_model": 32, "n_layers": 2, "n_heads": 2}, {"d_model": 64, "n_layers": 2, "n_heads": 2}]}},
     r"grid.compute: items \[0\] and \[1\]"),
    ("repeated lr multiplier", {"optimizer.lr_multipliers": [1.0, 1.0]}, r"optimizer.lr_multipliers: items \[0\] and \[1\]"),
    ("repeated model", {"grid.params": [{"d_model": 32, "n_layers": 2, "n_heads": 2}] * 2},  # written as an alias
     r"grid.params: two entries give the same model \(items \[0\] and \[1\]"),
]


@pytest.mark.parametrize("case,overrides,error", DUPLICATE_CASES, ids=[c[0] for c in DUPLICATE_CASES])
def test_duplicate_run_is_blamed_on_the_key_that_repeats(tmp_path, case, overrides, error):
    with pytest.raises(SpecError, match=error):
        _expand(tmp_path, _spec_text(tmp_path, **overrides))


def test_ordinary_aliases_load(tmp_path):
    text = _spec_text(tmp_path).replace("  lr: 0.003\n", "  lr: &rate 0.003\n  weight_decay: *rate\n")
    assert _load(tmp_path, text).optimizer.weight_decay == pytest.approx(0.003)


def test_relative_meds_path_is_relative_to_the_spec_not_the_working_directory(tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    (here / "meds").mkdir(parents=True)
    (elsewhere / "meds").mkdir(parents=True)  # a same-named folder where the command is launched
    spec_path = here / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(Path("meds"))))
    monkeypatch.chdir(elsewhere)
    assert Path(load_spec(spec_path).dataset.meds) == (here / "meds").resolve()
    (here / "meds").rmdir()  # gone beside the spec: refused, though ./meds exists where we stand
    with pytest.raises(SpecError, match="relative to the spec's folder"):
        load_spec(spec_path)


def test_a_spec_given_as_a_dict_resolves_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "meds").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Path(parse_spec(tiny_spec(Path("meds"))).dataset.meds) == (tmp_path / "meds").resolve()
