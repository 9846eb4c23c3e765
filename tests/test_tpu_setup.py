"""tpu_setup/ stays consistent with the code it drives: cluster YAMLs that Ray accepts, scripts that
parse, and every file, pyproject extra, CLI command/option and Python name they mention exists.

Offline and fast: nothing here starts Ray, JAX or a cluster.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tpu_setup"
YAMLS = sorted(SETUP.glob("*.yaml"))
SHELL = sorted([*SETUP.glob("*.sh"), *SETUP.glob("*.sbatch")])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REMOTE_REPO = "~/medscale"  # where the cluster YAMLs put the checkout (file_mounts)

# Cloud TPU software version for JAX, per generation (cloud.google.com/tpu/docs/runtimes).
TPU_RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}


def text_files() -> list[Path]:
    return sorted(p for p in SETUP.iterdir() if p.is_file() and p.suffix in {".md", ".sh", ".sbatch", ".yaml", ".py"})


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cluster_yamls() -> list[Path]:
    return [p for p in YAMLS if "provider" in (load(p) or {})]


def test_folder_has_the_pieces():
    names = {p.name for p in SETUP.iterdir()}
    assert {"README.md", "install.sh", "mount_shared.sh", "slurm_sweep.sbatch", "multihost_run.py"} <= names
    providers = {load(p)["provider"]["type"] for p in cluster_yamls()}
    assert {"gcp", "aws"} <= providers
    assert any(accelerator_type(t) for p in cluster_yamls() for t in load(p)["available_node_types"].values())


# ----------------------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_parses(path):
    assert isinstance(load(path), dict)


@pytest.mark.parametrize("path", cluster_yamls(), ids=lambda p: p.name)
def test_ray_cluster_yaml_matches_ray_schema(path):
    cfg = load(path)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, f"{path.name}: missing {key}"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types, f"{path.name}: head_node_type is not a node type"
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    for name, t in types.items():
        assert t.get("min_workers", 0) <= t.get("max_workers", cfg["max_workers"]), name
    # Ray's own schema (what `ray up` validates against), shipped with the pinned Ray.
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(ray_autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)


def accelerator_type(node_type: dict) -> str | None:
    return node_type["node_config"].get("acceleratorType")


def tpu_chips_per_host(kind: str) -> int:
    generation, cores = kind.split("-")
    chips = int(cores) // CORES_PER_CHIP[generation]
    per_host = 8 if generation in ("v5litepod", "v6e") and chips <= 8 else 4
    return min(chips, per_host)


@pytest.mark.parametrize("path", [p for p in cluster_yamls() if load(p)["provider"]["type"] == "gcp"],
                         ids=lambda p: p.name)
def test_gcp_tpu_node_types(path):
    cfg = load(path)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert "machineType" in head["node_config"] and not accelerator_type(head), "a TPU cannot be the Ray head"
    assert head["resources"].get("CPU") == 0, "runs must not land on the head"
    for name, t in cfg["available_node_types"].items():
        kind = accelerator_type(t)
        if not kind:
            continue
        assert re.fullmatch(r"(v|tpu)\d+[a-z]*-\d+", kind), kind
        assert "machineType" not in t["node_config"], f"{name}: a TPU node has no machineType"
        generation = kind.split("-")[0]
        assert t["node_config"]["runtimeVersion"] == TPU_RUNTIMES[generation], f"{name}: runtime for {kind}"
        # Ray detects the chips of each host and the autoscaler plans with this number.
        assert t["resources"] == {"TPU": tpu_chips_per_host(kind)}, f"{name}: TPU resource of one {kind} host"
        try:
            from ray._private.accelerators.tpu import TPUAcceleratorManager
        except ImportError:
            continue
        assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(kind)


def test_tpu_yamls_single_host_for_sweeps_and_a_slice_for_multihost():
    kinds = {p.name: [accelerator_type(t) for t in load(p)["available_node_types"].values() if accelerator_type(t)]
             for p in cluster_yamls()}
    hosts = lambda k: int(k.split("-")[1]) // CORES_PER_CHIP[k.split("-")[0]] // tpu_chips_per_host(k)  # noqa: E731
    assert all(hosts(k) == 1 for k in kinds["cluster_tpu_hosts.yaml"])
    assert all(hosts(k) > 1 for k in kinds["cluster_tpu_pod.yaml"])
    # multihost_run.py is told the slice type; the README/YAML example must name the YAML's slice.
    pod_kinds = set(kinds["cluster_tpu_pod.yaml"])
    mentioned = set(re.findall(r"--pod-type (\S+)", (SETUP / "README.md").read_text() + (SETUP / "cluster_tpu_pod.yaml").read_text()))
    assert mentioned and mentioned <= pod_kinds


def test_scheduler_asks_for_the_resource_the_yamls_declare():
    source = (ROOT / "scaling" / "sweep" / "scheduler.py").read_text()
    assert re.search(r"""\{\s*["']TPU["']\s*:\s*tpus\s*\}""", source), "scheduler no longer requests {'TPU': tpus}"
    assert "num_gpus=gpus" in source


@pytest.mark.parametrize("path", cluster_yamls(), ids=lambda p: p.name)
def test_cluster_yaml_syncs_the_repo_and_installs_from_it(path):
    cfg = load(path)
    assert cfg["file_mounts"] == {REMOTE_REPO: "."}, "ray up from the repo root syncs it to ~/medscale"
    assert ".gitignore" in cfg.get("rsync_filter", [])
    assert ".venv" in (ROOT / ".gitignore").read_text(), "the synced tree must not overwrite the nodes' venvs"
    setup = " ".join(cfg["setup_commands"])
    assert f"{REMOTE_REPO}/tpu_setup/install.sh" in setup and f"{REMOTE_REPO}/tpu_setup/mount_shared.sh" in setup
    assert "--bashrc" in setup, "`ray start` must run from the venv"
    head = " ".join(cfg.get("head_setup_commands", []))
    assert f"{REMOTE_REPO}/.venv/bin/python" in head  # install.sh's default venv: <repo>/.venv
    assert '"${MEDSCALE_VENV:-$REPO/.venv}"' in (SETUP / "install.sh").read_text()


# ------------------------------------------------------------------------- referenced files / names
REF = re.compile(r"(?<![\w/])(?:~/medscale/|\$REPO/|\$MEDSCALE_HOME/)?"
                 r"((?:tpu_setup|experiments|models|scaling|docs)/[\w./-]*\w|requirements\.lock|pyproject\.toml)")


@pytest.mark.parametrize("path", text_files(), ids=lambda p: p.name)
def test_referenced_repo_files_exist(path):
    missing = []
    for ref in set(REF.findall(path.read_text())):
        if "SPEC" in ref or ref.startswith("experiments/") and ref.endswith(".yaml"):
            continue  # placeholders for the user's spec
        if not (ROOT / ref).exists():
            missing.append(ref)
    assert not missing, f"{path.name} mentions files that do not exist: {missing}"


def defined_names(module_path: Path) -> set[str]:
    tree = ast.parse(module_path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_python_names_mentioned_exist():
    sharding = defined_names(ROOT / "models" / "sharding.py")
    for path in text_files():
        for name in re.findall(r"models\.sharding(?:\.| import )(\w+)", path.read_text()):
            assert name in sharding, f"{path.name}: models.sharding.{name} does not exist"
    readme = (SETUP / "README.md").read_text()
    for name in ("initialize_distributed", "make_mesh", "shard_batch"):
        if f"`{name}" in readme:
            assert name in sharding


def test_extras_exist_in_pyproject():
    extras = PYPROJECT["project"]["optional-dependencies"]
    used = set()
    for path in text_files():
        used |= set(re.findall(r"\.\[(\w+)\]", path.read_text()))
    used |= set(re.findall(r'EXTRA="\[(\w+)\]"', (SETUP / "install.sh").read_text()))
    assert {"cuda", "tpu"} <= used
    assert used <= set(extras), f"extras not in pyproject: {used - set(extras)}"
    assert any(d.startswith("jax[cuda") for d in extras["cuda"])
    assert any(d.startswith("jax[tpu]") for d in extras["tpu"])
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^jax==", lock, re.M) and re.search(r"^ray==", lock, re.M)


def test_resource_keys_in_docs_are_spec_fields():
    tree = ast.parse((ROOT / "scaling" / "sweep" / "spec.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ResourcesSpec")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    found = re.findall(r"resources: (\{\s*[a-z_]+:[^}]*\})", (SETUP / "README.md").read_text())  # spec, not Ray YAML
    assert found
    for snippet in found:
        assert set(yaml.safe_load(snippet)) <= fields, snippet


# --------------------------------------------------------------------------------------------- CLI
def cli_commands():
    import click
    import typer

    from medscale.scaling.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    return {name: {o for p in group.get_command(ctx, name).params for o in p.opts}
            for name in group.list_commands(ctx)}


def medscale_invocations() -> list[tuple[str, list[str]]]:
    calls = []
    for path in text_files():
        for line in path.read_text().splitlines():
            # commands, not prose: at the start of a (comment) line, of a `code span`, or after && / |
            for match in re.finditer(r"(?:^[\s#]*|`|&&\s*|\|\s*)medscale (\w+)([^`\n|#&]*)", line):
                calls.append((path.name, [match.group(1), *match.group(2).split()]))
    return calls


def test_console_script_and_commands_exist():
    assert PYPROJECT["project"]["scripts"]["medscale"] == "medscale.scaling.cli:main"
    commands = cli_commands()
    calls = medscale_invocations()
    assert {c[1][0] for c in calls} >= {"sweep"}
    for where, (command, *args) in calls:
        assert command in commands, f"{where}: `medscale {command}` is not a command of scaling/cli.py"
        for arg in args:
            option = arg.split("=")[0]
            if option.startswith("--"):
                assert option in commands[command], f"{where}: `medscale {command} {option}` does not exist"


# ------------------------------------------------------------------------------------------ scripts
@pytest.mark.parametrize("path", SHELL, ids=lambda p: p.name)
def test_shell_scripts_parse(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.read_text().startswith("#!"), "needs a shebang"


def test_install_sh_detects_and_rejects():
    script = str(SETUP / "install.sh")
    env = {**os.environ, "MEDSCALE_ACCELERATOR": "auto"}
    out = subprocess.run(["bash", script, "--detect"], capture_output=True, text=True, env=env, timeout=10)
    assert out.returncode == 0 and out.stdout.strip() in {"cpu", "cuda", "tpu"}, out.stderr
    forced = subprocess.run(["bash", script, "--accelerator", "tpu", "--detect"], capture_output=True, text=True)
    assert forced.stdout.strip() == "tpu"
    bad = subprocess.run(["bash", script, "--accelerator", "rocm"], capture_output=True, text=True)
    assert bad.returncode != 0 and "cpu, cuda or tpu" in bad.stderr
    assert "--help" not in bad.stdout
    text = Path(script).read_text()
    assert '-r "$LOCK"' in text and '-c "$LOCK" -e "$REPO$EXTRA"' in text, "lock first, then the package"


def test_mount_shared_refuses_placeholders():
    out = subprocess.run(["bash", str(SETUP / "mount_shared.sh"), "REPLACE_ME_IP:/medscale", "/tmp/x"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "REPLACE_ME" in out.stderr


def test_yaml_shell_commands_parse():
    for path in cluster_yamls():
        cfg = load(path)
        for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                    "head_start_ray_commands", "worker_start_ray_commands"):
            for command in cfg.get(key, []):
                shlex.split(command)
                result = subprocess.run(["bash", "-n"], input=command, capture_output=True, text=True)
                assert result.returncode == 0, f"{path.name} {key}: {command}"


def test_slurm_script_runs_the_sweep_against_its_ray_head():
    text = (SETUP / "slurm_sweep.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert "ray start --head" in text and 'ray start --address="$ADDRESS"' in text
    assert re.search(r'medscale sweep "\$SPEC" --address "\$ADDRESS" --out "\$OUT"', text)


# ------------------------------------------------------------------------------------- multihost
def load_multihost():
    import importlib.util

    spec = importlib.util.spec_from_file_location("multihost_run", SETUP / "multihost_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multihost_arguments():
    mh = load_multihost()
    assert mh.head_resource("v4-32") == "TPU-v4-32-head"
    assert mh.parse_args(["--pod-type", "v5litepod-16"]).command == []
    args = mh.parse_args(["--pod-type", "v4-32", "--", "medscale", "train", "c.yaml", "--out", "/x"])
    assert args.command == ["medscale", "train", "c.yaml", "--out", "/x"]
    with pytest.raises(SystemExit):
        mh.parse_args(["--pod-type", "v4"])
    compile(mh.CHECK, "check", "exec")
    assert "initialize_distributed()" in mh.CHECK


class FakeRay:
    """Just enough of ray for multihost_run.main: tasks run inline, resource requests are recorded."""

    def __init__(self, slice_name="slice-a", hosts=4, chips=4):
        self.requests, self.info = [], (slice_name, hosts, chips)
        fake = self

        class Ref:
            def __init__(self, value):
                self.value = value

        class Remote:
            def __init__(self, fn, resources=None):
                self.fn, self.resources = fn, resources

            def options(self, resources):
                return Remote(self.fn, resources)

            def remote(self, *args):
                fake.requests.append(self.resources)
                return Ref(self.fn(*args))

        self.remote = lambda **_: (lambda fn: Remote(fn))
        self.init = lambda **_: None
        self.wait = lambda refs, timeout: (refs, [])
        self.get = lambda ref: [r.value for r in ref] if isinstance(ref, list) else ref.value
        self.cancel = lambda ref: None


def test_multihost_runs_one_task_per_host_of_the_slice(monkeypatch, tmp_path):
    import types

    mh = load_multihost()
    fake = FakeRay(hosts=3, chips=4)
    tpu = types.SimpleNamespace(get_current_pod_name=lambda: fake.info[0],
                                get_current_pod_worker_count=lambda: fake.info[1],
                                get_num_tpu_chips_on_node=lambda: fake.info[2])
    ray_mod = types.ModuleType("ray")
    ray_mod.__dict__.update({k: getattr(fake, k) for k in ("remote", "init", "wait", "get", "cancel")})
    util = types.ModuleType("ray.util")
    util.tpu = tpu
    ray_mod.util = util
    monkeypatch.setitem(sys.modules, "ray", ray_mod)
    monkeypatch.setitem(sys.modules, "ray.util", util)
    monkeypatch.chdir(tmp_path)

    assert mh.main(["--pod-type", "v4-24", "--", sys.executable, "-c", "pass"]) == 0
    assert fake.requests[0] == {"TPU-v4-24-head": 1}
    assert fake.requests[1:] == [{"TPU": 4, "slice-a": 1}] * 3
    assert mh.main(["--pod-type", "v4-24", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 1
