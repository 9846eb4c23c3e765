"""analysis/ must load without JAX, Flax, Optax, Orbax, grain, Ray or torch: results are read on laptops."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import analysis

FORBIDDEN = ("jax", "flax", "optax", "orbax", "grain", "ray", "torch", "scaling", "models", "data")


def test_analysis_imports_no_training_stack():
    modules = ["analysis"] + [f"analysis.{m.name}" for m in pkgutil.iter_modules(analysis.__path__)]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    root = Path(analysis.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "analysis.report" in modules and "analysis.plots" in modules
