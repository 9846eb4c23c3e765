"""scaling/plan/memory.py: the planner compiles the real train step and reads what a device holds; a spec
whose run will not fit is refused before any compute (exit 2, naming the run and the remedies)."""
import pytest
from typer.testing import CliRunner

from conftest import tiny_spec, write_spec
from medscale.models.config import ModelConfig
from medscale.scaling.cli import app
from medscale.scaling.plan.memory import compile_estimate, estimate_memory, plan_key, plan_run
from medscale.scaling.pipeline import DRY_RUN_VOCAB, launch_sweep
from medscale.scaling.sweep.spec import SpecError, expand, parse_spec

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=2, d_ff=192, max_len=256)


def _run(B=8, L=256, mesh=None, **options):
    return plan_run(CFG.to_dict(), B, L, mesh, **options)


def _plan(devices=1, **kw):
    return compile_estimate(plan_key(_run(**kw), devices, "cpu"))


def test_memory_efficient_options_shrink_the_planned_step():
    plain = _plan(attention="xla")
    flash = _plan(attention="flash")
    remat = _plan(attention="flash", remat="full")
    micro = _plan(attention="xla", microbatches=4)
    # [B, H, L, L] float32 probabilities, causal blocks: over 8 x 2 x 256 x 256 x 4 B / 2 = 2 MiB a layer
    assert plain.temporaries - flash.temporaries > 2 * 2 * 2**20
    assert remat.temporaries < flash.temporaries
    assert micro.temporaries < plain.temporaries / 2
    assert plain.params == flash.params == remat.params  # float32 master weights either way
    assert plain.opt_state == pytest.approx(2 * plain.params, rel=0.01)  # AdamW: two moments


def test_fsdp_splits_parameters_and_optimizer_state_over_the_devices():
    one = _plan(devices=1)
    fsdp = _plan(devices=4, mesh={"fsdp": 4})
    # every weight matrix has a d_model axis that 4 divides; only the small norms stay whole
    assert fsdp.params < one.params / 3.5 and fsdp.opt_state < one.opt_state / 3.5
    assert fsdp.peak < one.peak


def test_estimates_are_cached_by_shape(tmp_path):
    runs = [_run(L=64), _run(L=64), _run(L=128)]
    first = estimate_memory(runs, devices=1, backend="cpu", cache_dir=tmp_path)  # one subprocess, two compiles
    assert first[0] == first[1] and first[2].temporaries > first[0].temporaries
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert estimate_memory(runs[:1], devices=1, backend="cpu", cache_dir=tmp_path) == first[:1]


def test_dry_run_shows_memory_and_refuses_a_run_that_does_not_fit(tmp_path):
    raw = tiny_spec(tmp_path, **{"resources.device_memory_gb": 0.001})
    path = write_spec(tmp_path / "big.yaml", raw)
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"],
                                terminal_width=250)
    assert result.exit_code == 2, result.output
    assert "will not fit in 0 GiB per device" in result.output and "GiB per device on 1 cpu device(s)" in result.output
    assert "decoder-" in result.output
    for remedy in ("optimizer.microbatches", "model.remat", "resources.mesh.fsdp", "optimizer.batch_size"):
        assert remedy in result.output
    assert not (tmp_path / "o" / "runs").exists()  # nothing was launched

    # a real launch refuses it too, before any run folder exists (the plan is cached by now)
    spec = parse_spec(raw)
    runs = expand(spec, token_dir="", vocab_size=DRY_RUN_VOCAB, dataset_id="")
    with pytest.raises(SpecError, match="will not fit"):
        launch_sweep(spec, runs, tmp_path / "o")
    assert not (tmp_path / "o" / "runs").exists()

    raw["resources"]["device_memory_gb"] = 64
    ok = CliRunner().invoke(app, ["sweep", str(write_spec(tmp_path / "ok.yaml", raw)), "--out", str(tmp_path / "o"),
                                  "--dry-run"], terminal_width=250)
    assert ok.exit_code == 0, ok.output
    assert "memory per device on 1 cpu device(s)" in ok.output and "64 GiB" in ok.output
