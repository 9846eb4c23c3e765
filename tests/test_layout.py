"""The design card's layout and one-way imports, checked in fresh interpreters."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("jax", "flax", "optax", "orbax", "grain", "ray", "torch")


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layout_of_the_design_card():
    for name in ("pyproject.toml", "README.md", "requirements.lock", ".ci/run", "docs/ARCHITECTURE.md"):
        assert (ROOT / name).is_file(), name
    for folder in ("scaling", "models", "data", "experiments", "analysis", "tests", "tpu_setup", "benchmarks", "docs"):
        assert (ROOT / folder).is_dir(), folder


def test_data_and_models_never_import_scaling():
    for package in ("data", "models"):
        for path in (ROOT / package).rglob("*.py"):
            assert "scaling" not in _imported_top_levels(path), f"{path} imports scaling/"


def test_analysis_imports_no_training_stack_in_a_fresh_interpreter():
    for path in (ROOT / "analysis").rglob("*.py"):
        bad = _imported_top_levels(path) & set(TRAINING_STACK + ("scaling", "models", "data"))
        assert not bad, f"{path} imports {bad}"
    code = ("import importlib, json, sys\n"
            f"for m in {_modules('analysis')!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(set(k.split('.')[0] for k in sys.modules) & set({TRAINING_STACK!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python3 dev\.py \w+)", readme, flags=re.M)
    assert "python3 dev.py test" in commands and "python3 dev.py demo" in commands
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == ["python3 dev.py test"]


def test_console_script_points_at_the_cli():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'medscale = "scaling.cli:main"' in text
    from scaling.cli import app, main  # noqa: F401

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"generate", "tokenize", "train", "sweep", "fit", "analyze", "optimal", "demo"} <= names
