"""The design card's layout, the `medscale` namespace and the one-way imports, checked in fresh interpreters."""
import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("jax", "flax", "optax", "orbax", "grain", "ray", "torch")
ROOMS = {"data": "medscale.data", "models": "medscale.models", "analysis": "medscale.analysis",
         "scaling": "medscale.scaling"}


def _modules(folder: str) -> list[str]:
    return sorted(
        ".".join((ROOMS[folder],) + p.relative_to(ROOT / folder).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports (dotted), plus relative imports resolved to their room."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layout_of_the_design_card():
    for name in ("pyproject.toml", "README.md", "requirements.lock", ".ci/run", "docs/ARCHITECTURE.md"):
        assert (ROOT / name).is_file(), name
    for folder in ("scaling", "models", "data", "experiments", "analysis", "tests", "tpu_setup", "benchmarks", "docs"):
        assert (ROOT / folder).is_dir(), folder


def test_every_package_folder_is_installed_under_medscale():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in setuptools  # no remapping that only the import system understands
    for folder in ROOMS:
        link = ROOT / "medscale" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), f"medscale/{folder} -> ../{folder}"
    listed = set(setuptools["packages"])
    for folder, package in ROOMS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((package,) + sub) in listed, f"{init.parent} is not listed in pyproject's packages"


def test_nothing_imports_the_card_folders_as_top_level_packages():
    for folder in ("data", "models", "analysis", "scaling", "medscale", "tests", "benchmarks", "tpu_setup"):
        for path in (ROOT / folder).rglob("*.py"):
            bad = {m for m in _imports(path) if m.split(".")[0] in ROOMS}
            assert not bad, f"{path} imports {bad}: use medscale.<room>"


def test_a_users_own_models_and_data_do_not_shadow_medscale(tmp_path):
    """A notebook next to its own `models/` and `data.py` gets theirs, and medscale still gets its own."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MINE = 'models'\n")
    (tmp_path / "data.py").write_text("MINE = 'data'\n")
    (tmp_path / "scaling.py").write_text("MINE = 'scaling'\n")
    code = ("import importlib, json, models, data, scaling\n"
            "import medscale.models.config, medscale.data.meds, medscale.scaling.sweep.spec, medscale.analysis\n"
            "print(json.dumps([models.MINE, data.MINE, scaling.MINE, medscale.models.config.__name__,\n"
            "                  'analysis' in {m.split('.')[0] for m in __import__('sys').modules}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["models", "data", "scaling", "medscale.models.config", False]


def test_nothing_of_the_card_is_importable_at_top_level_after_installation(tmp_path):
    code = ("import importlib.util, json\n"
            "print(json.dumps([n for n in ('data', 'models', 'analysis', 'scaling') if importlib.util.find_spec(n)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_data_and_models_never_import_scaling():
    for folder in ("data", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            bad = {m for m in _imports(path) if m.startswith("medscale.scaling")}
            assert not bad, f"{path} imports {bad} (the arrow runs the wrong way)"


def test_analysis_imports_no_training_stack_in_a_fresh_interpreter(tmp_path):
    for path in (ROOT / "analysis").rglob("*.py"):
        bad = {m for m in _imports(path)
               if m.split(".")[0] in TRAINING_STACK or m.startswith(("medscale.scaling", "medscale.models", "medscale.data"))}
        assert not bad, f"{path} imports {bad}"
    code = ("import importlib, json, sys\n"
            f"for m in {_modules('analysis')!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(set(k.split('.')[0] for k in sys.modules) & set({TRAINING_STACK!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
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
    assert 'medscale = "medscale.scaling.cli:main"' in text
    from medscale.scaling.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"generate", "tokenize", "train", "sweep", "fit", "analyze", "optimal", "demo"} <= names


def test_cli_holds_commands_only():
    """Orchestration lives in library modules a notebook can call; the CLI parses options and renders."""
    tree = ast.parse((ROOT / "scaling" / "cli.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not functions & {"launch_sweep", "run_downstream", "_demo_downstream", "_load_spec_and_data"}
    import medscale.scaling.pipeline as pipeline

    for name in ("load_spec_and_data", "expand_over", "plan_sweep", "estimate_plan", "train_one", "launch_sweep",
                 "run_downstream", "analyze_store"):
        assert callable(getattr(pipeline, name)), name


def _medscale_imports(src: str):
    """(line, column of the dotted name's last character, name) of every absolute medscale.* import."""
    lines = src.splitlines()
    for node in ast.walk(ast.parse(src)):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("medscale") and name in lines[node.lineno - 1]:
                yield node.lineno, lines[node.lineno - 1].index(name) + len(name) - 1, name


def _unresolved(path: Path, project, src: str | None = None) -> list[str]:
    import jedi

    src = path.read_text() if src is None else src
    script = jedi.Script(src, path=str(path), project=project)
    return [f"{path.relative_to(ROOT)}:{line} {name}" for line, col, name in _medscale_imports(src)
            if not any(d.module_path for d in script.goto(line, col))]


def test_a_static_tool_resolves_every_medscale_import_from_the_source_tree():
    """jedi (what editors use for go-to-definition), given only the source tree on its path, finds the file of
    every medscale.* import in the package; a made-up module stays unresolved, so the check can fail."""
    import jedi

    project = jedi.Project(ROOT, sys_path=[str(ROOT)], smart_sys_path=False)
    files = [p for room in ROOMS for p in (ROOT / room).rglob("*.py")] + sorted((ROOT / "medscale").glob("*.py"))
    unresolved = [u for path in files for u in _unresolved(path, project)]
    assert len(files) > 50 and unresolved == []
    probe = "from medscale.analysis import parametric\nfrom medscale.no_such_room import x\n"  # never written
    assert _unresolved(ROOT / "medscale" / "probe.py", project, probe) == ["medscale/probe.py:2 medscale.no_such_room"]
