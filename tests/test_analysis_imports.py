"""medscale.analysis must load without JAX, Flax, Optax, Orbax, grain, Ray or torch: results are read on laptops."""
import pkgutil
import subprocess
import sys

import medscale.analysis as analysis

FORBIDDEN = ("jax", "flax", "optax", "orbax", "grain", "ray", "torch")
FORBIDDEN_ROOMS = ("medscale.scaling", "medscale.models", "medscale.data")


def test_analysis_imports_no_training_stack(tmp_path):
    modules = ["medscale.analysis"] + [f"medscale.analysis.{m.name}" for m in pkgutil.iter_modules(analysis.__path__)]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r} or k.startswith({FORBIDDEN_ROOMS!r}))\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "medscale.analysis.report" in modules and "medscale.analysis.plots" in modules
