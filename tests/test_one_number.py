"""One number per quantity (issue 25, item 5): every law is fitted once per analysis and the CLI, fits.json
and the report print that fit's estimate and interval; a parameter at its optimisation bound is named as
such beside its value, with what it means; CLI text written to a pipe is never wrapped or cut."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medscale.analysis import synthetic

MEDSCALE = [sys.executable, "-m", "medscale.scaling.cli"]


def _g3(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _triple(d: dict) -> str:
    """An estimate as the CLI prints it at 3 significant digits: 'value [low, high]'."""
    lo, hi = d["interval"]
    return f"{_g3(d['value'])} [{_g3(lo)}, {_g3(hi)}]"


def _e_at_zero_table():
    """Runs from a law with no irreducible loss: the fit puts E at its lower bound (~2e-9)."""
    return synthetic.isoflop_table(budgets=(1e18, 1e19, 1e20), sizes=5, noise=0.002,
                                   law={**synthetic.LAW, "E": 0.0})


# ---------------------------------------------------------------------------------------------
# medscale fit: text and --json, through a pipe
# ---------------------------------------------------------------------------------------------

def test_piped_fit_prints_the_json_numbers_on_whole_lines_and_names_e_at_its_bound(tmp_path):
    path = tmp_path / "runs.csv"
    _e_at_zero_table().to_csv(path, index=False)
    args = [str(path), "--params", "params", "--loss", "loss", "--tokens", "tokens", "--n-boot", "8",
            "--budget", "1e21"]
    env = {**os.environ, "COLUMNS": "80"}  # rich's width for a pipe: text used to be wrapped at 80 columns
    text = subprocess.run(MEDSCALE + ["fit"] + args, capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 0, text.stderr
    from typer.testing import CliRunner

    from medscale.scaling.cli import app

    js = CliRunner().invoke(app, ["fit"] + args + ["--json"])  # the same command, in this process
    assert js.exit_code == 0, js.output
    out = json.loads(js.stdout)
    lines = text.stdout.splitlines()

    def line_of(label: str) -> str:
        found = [ln for ln in lines if re.match(rf"^\s+{re.escape(label)} = ", ln)]
        assert len(found) == 1, (label, text.stdout)
        return found[0]

    num = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
        lo, hi = out[key]["interval"]
        assert f"= {num(out[key]['value'])}   [{num(lo)}, {num(hi)}]" in line_of(key), key
    for key, label in (("N", "optimal      N"), ("D", "optimal      D")):
        lo, hi = out["optimal"][key]["interval"]
        assert f"= {num(out['optimal'][key]['value'])}   [{num(lo)}, {num(hi)}]" in line_of(label)

    # E at its bound: named beside the value, with its meaning, in the text and in the JSON
    (e_flag,) = [b for b in out["at_bound"] if b["parameter"] == "E" and b["where"] == "estimate"]
    assert e_flag["side"] == "lower" and "not identified" in e_flag["meaning"]
    assert e_flag["value"] == pytest.approx(out["E"]["value"])
    assert f"at its lower bound (~0): {e_flag['meaning']}" in line_of("E")

    # a pipe gets whole lines: every note and warning on one line, no value on a line of its own
    for note in out["notes"] + out["optimal"]["notes"]:
        assert f"  note: {note}" in lines, note
    for warning in out["warnings"]:
        assert f"  warning: {warning}" in lines, warning
    assert not [ln for ln in lines if re.match(r"^\s*[-+]?\d", ln)], text.stdout
    assert max(len(ln) for ln in lines) > 100  # the long lines a pipe used to get cut at 80 columns


# ---------------------------------------------------------------------------------------------
# the report: a parameter at its bound
# ---------------------------------------------------------------------------------------------

def test_report_and_fits_json_name_e_at_its_bound(tmp_path, fast_figures):
    from medscale.analysis.report import write_report

    index = write_report(tmp_path / "rep", results=_e_at_zero_table(), budget=1e21, n_boot=4)
    page = index.read_text()
    fits = json.loads((index.parent / "fits.json").read_text())
    a3 = fits["objectives"]["decoder"]["fits"]["approach_3"]
    (flag,) = [b for b in a3["at_bound"] if b["parameter"] == "E" and b["where"] == "estimate"]
    assert "E is a lower limit, not a measurement" in flag["meaning"]
    row = re.search(r"<tr><td>E</td>.*?</tr>", page).group(0)
    assert "at its lower bound (~0)" in row
    assert "is at its lower bound (~0): the irreducible loss is not identified" in page
    assert "The fitted irreducible loss (Approach 3) is E" not in page


# ---------------------------------------------------------------------------------------------
# a store: the report, fits.json, the recommendation and the CLI from the same fits
# ---------------------------------------------------------------------------------------------

def _store(root: Path, *, arm: bool) -> Path:
    """A run store of an IsoFLOP sweep (3 budgets x 5 sizes) and, with `arm`, a data-constrained arm: runs on
    5% of the data that repeat it (the demo's layout)."""
    from medscale.atomic import write_json
    from medscale.scaling.sweep.store import RunStore

    store = RunStore(root, say=lambda m: None).claim()
    iso = synthetic.isoflop_table(budgets=(1e12, 1e13, 1e14), sizes=5, span=6.0, noise=0.003)
    rows = [dict(r, unique_tokens=1e12, train_fraction=1.0) for r in iso.to_dict("records")]
    if arm:
        rng = np.random.default_rng(1)
        for n in (3e4, 3e5):
            for d, u in ((3e7, 3e6), (1e8, 3e6), (3e7, 1e6)):
                loss = float(synthetic.data_constrained_loss(n, d, u)) * np.exp(rng.normal(0, 0.003))
                rows.append({"params": n, "tokens": d, "loss": loss, "budget": None, "unique_tokens": u,
                             "train_fraction": 0.05, "d_model": 64, "n_layers": 2, "n_heads": 1})
    for i, r in enumerate(rows):
        width = int(r["d_model"])
        budget = r["budget"] if r["budget"] is not None and r["budget"] == r["budget"] else None
        run = store.ensure({
            "sweep": "s", "objective": "decoder", "budget": budget,
            "model": {"vocab_size": 100, "d_model": width, "n_layers": int(r["n_layers"]),
                      "n_heads": int(max(1, r["n_heads"])), "d_ff": 4 * width, "max_len": 64, "causal": True},
            "data": {"token_dir": "/x", "dataset_id": "abc", "seq_len": 32, "batch_size": 8, "mask_prob": 0.15,
                     "train_fraction": r["train_fraction"]},
            "train": {"tokens": int(r["tokens"]) + i, "steps": 100, "seed": 0, "lr": 1e-3},
            "eval": {"n_evals": 2, "batches": 1}, "checkpoint": {"every_steps": 5}})
        n, d, u = float(r["params"]), float(r["tokens"]), float(r["unique_tokens"])
        write_json(run.metrics_path, {"loss": float(r["loss"]), "params": n, "param_count": "non_embedding",
                                      "params_non_embedding": n, "params_total": 1.3 * n, "tokens": d,
                                      "compute": 6 * n * d, "flops_full": 6 * n * d * (1 + 300 / np.sqrt(n)),
                                      "unique_tokens": u, "epochs": d / u, "train_fraction": r["train_fraction"]})
        run.set_status("done", attempts=1)
    return root


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory):
    """The IsoFLOP store without a data-constrained arm and its analysis (figures stubbed, n_boot 4), analysed
    once for the tests that read it; none of them writes into the store or the report."""
    from conftest import stub_figures
    from medscale.scaling.pipeline import analyze_store

    root = _store(tmp_path_factory.mktemp("one_number") / "store", arm=False)
    with pytest.MonkeyPatch.context() as mp:
        stub_figures(mp)
        analyzed = analyze_store(root, n_boot=4)
    return root, analyzed


def _demo_lines(analyzed) -> list[str]:
    from medscale.scaling.cli import demo_lines
    from medscale.scaling.demo import DemoResult

    return demo_lines(DemoResult(report=analyzed.report, budget=analyzed.budget,
                                 recommendation=analyzed.recommendation("decoder"), minutes=0.0,
                                 fits=analyzed.fits))


def test_analyze_fits_once_and_the_cli_prints_the_report_numbers(plain_store):
    """No data-constrained arm: the recommendation's law is the report's Approach 3 fit itself, so the CLI's
    law line, the demo summary and fits.json give the decoder's a as one estimate with one interval, and the
    recommendation's N_opt is the report's (the issue: [0.396, 0.563] against [0.403, 0.546]; 1.81e5 against
    1.87e5)."""
    _, analyzed = plain_store
    fits = analyzed.analysis.objectives["decoder"]
    rec = analyzed.recommendation("decoder")
    assert rec["fit"] is fits.law is fits.results[3]  # fitted once, reused
    on_disk = json.loads((analyzed.report.parent / "fits.json").read_text())
    assert on_disk == analyzed.fits  # what the CLI prints from is what fits.json holds
    dec = on_disk["objectives"]["decoder"]
    a3, recj = dec["fits"]["approach_3"], dec["recommendation"]
    assert recj["law"] == "chinchilla" and recj["allocation"] == json.loads(json.dumps(rec["allocation"].to_dict()))
    # the conventions table's cell for the law's own N and FLOP count is the recommendation, not a refit
    assert dec["conventions"]["non_embedding/full"]["N"] == recj["allocation"]["n_opt"]

    lines = _demo_lines(analyzed)
    printed_a = [m.group(1) for ln in lines for m in re.finditer(r"\ba = (\S+ \[\S+, \S+\])", ln)]
    assert len(printed_a) == 2 and set(printed_a) == {_triple(a3["a"])}, lines
    assert any(f"N_opt = {_triple(recj['allocation']['n_opt'])} params" in ln for ln in lines), lines

    from medscale.analysis.report import _g

    n = recj["allocation"]["n_opt"]
    page = analyzed.report.read_text()
    assert f"{_g(n['value'])} <small>[{_g(n['interval'][0])}, {_g(n['interval'][1])}]</small>" in page
    assert f"train about {_g(n['value'])} parameters" in page


def test_with_a_data_constrained_arm_each_printed_law_is_named_and_is_the_report_fit(tmp_path, fast_figures):
    """With runs that repeat their data the recommendation comes from the data-constrained law: the CLI names
    that law (not 'L(N, D)') and prints its fitted numbers, which are fits.json's data_constrained entry; the
    Approach 3 line is fits.json's Approach 3; the demo's data-constrained line is the report's allocation."""
    from medscale.scaling.demo import _data_constrained_effect
    from medscale.scaling.pipeline import analyze_store

    root = _store(tmp_path / "store", arm=True)
    analyzed = analyze_store(root, n_boot=4)
    fits = analyzed.analysis.objectives["decoder"]
    rec = analyzed.recommendation("decoder")
    assert rec["fit"] is fits.law is fits.data_constrained
    dec = analyzed.fits["objectives"]["decoder"]
    dc, a3, recj = dec["data_constrained"], dec["fits"]["approach_3"], dec["recommendation"]
    assert recj["law"] == "data_constrained"
    assert dc["unlimited"]["n_opt"] == recj["allocation"]["n_opt"]  # one N_opt for one law and FLOP count
    # the law families: the data-constrained law is their member (not refitted), on every run with its unique
    # tokens; their N_opt is made as the recommendation is (unlimited data, the full FLOP count)
    assert fits.families.families["data_constrained"].fit_ is fits.data_constrained.fit
    fam = dec["families"]
    assert fam["n_opt"] == recj["families_n_opt"] and fam["unique_tokens"] is None
    assert fits.families.families["chinchilla"].n_points_ == dc["n_points"]
    assert fam["n_opt"]["per_family"]["data_constrained"]["value"] == pytest.approx(
        recj["allocation"]["n_opt"]["value"], rel=2e-3)

    lines = _demo_lines(analyzed)
    law = lines[0]
    assert law.startswith("decoder, the data-constrained law L(N, D, U)"), law
    for key in ("E", "alpha", "beta", "R_star_D", "a", "b"):
        assert f"{key} = {_triple(dc[key])}" in law, key
    (summary,) = [ln for ln in lines if ln.startswith("decoder: Approach 3")]
    assert f"a = {_triple(a3['a'])}" in summary
    assert any(f"N_opt = {_triple(recj['allocation']['n_opt'])} params" in ln for ln in lines), lines

    said: list[str] = []
    constrained = _data_constrained_effect(analyzed, root, said.append)
    assert constrained["fit"] is fits.data_constrained
    assert constrained["allocation"].to_dict() == fits.dc_alloc.to_dict()
    assert f"N = {dc['allocation']['n_opt']['value']:.3g} for" in said[0]
    assert f"unlimited data: N = {dc['unlimited']['n_opt']['value']:.3g}" in said[0]


# ---------------------------------------------------------------------------------------------
# the law families: fits.json, the report, the demo's lines and `medscale fit --predict`
# ---------------------------------------------------------------------------------------------

def test_the_law_families_are_one_set_of_numbers_in_fits_json_the_report_the_demo_and_the_cli(tmp_path,
                                                                                            plain_store):
    """The families are fitted once per analysis (Approach 3 is their chinchilla member, not a refit); fits.json,
    the recommendation, the report's families table and the demo's line give the same validation, weights,
    chosen family and N_opt at the budget; `medscale fit --predict` on the same runs validates and weights the
    families identically."""
    from typer.testing import CliRunner

    from medscale.analysis.report import _g
    from medscale.scaling.cli import app
    from medscale.scaling.demo import families_lines
    from medscale.scaling.sweep.results import load_results

    root, analyzed = plain_store
    o = analyzed.analysis.objectives["decoder"]
    dec = analyzed.fits["objectives"]["decoder"]
    fam, recj = dec["families"], dec["recommendation"]
    assert o.families.families["chinchilla"].fit_ is o.fits[3]  # fitted once
    mix = fam["n_opt"]
    assert mix == json.loads(json.dumps(o.families_n_opt.to_dict()))
    assert fam["chosen"] == o.families.chosen and fam["weights"] == pytest.approx(o.families.weights)
    assert set(fam["weights"]) == {"chinchilla", "gadre", "kaplan", "farseer"}
    assert recj["families_n_opt"] == mix  # the recommendation carries the families' N_opt
    # the same law and FLOP count as the recommendation: chinchilla's N_opt is the recommendation's (0.1% grid)
    assert fam["compute_convention"] == recj["compute_convention"] == "full" and fam["budget"] == analyzed.budget
    assert mix["per_family"]["chinchilla"]["value"] == pytest.approx(recj["allocation"]["n_opt"]["value"], rel=2e-3)
    assert mix["interval"][0] <= mix["value"] <= mix["interval"][1]

    page = analyzed.report.read_text()
    cell = f"{_g(mix['value'])} <small>[{_g(mix['interval'][0])}, {_g(mix['interval'][1])}]</small>"
    assert page.count(cell) >= 2, cell  # the families table and the recommendation's row
    assert f"<b>{fam['chosen']} (chosen)</b>" in page
    for row in fam["summary"]:
        assert f"{row['mape']:.2f}%" in page, row
    assert f"N_opt at {fam['budget']:.3g} FLOPs = {_triple(mix)} params" in families_lines(analyzed.fits)[0]

    results, _ = load_results(root)
    runs = results[(results["status"] == "done") & (results["objective"] == "decoder")]
    runs[["params", "tokens", "loss"]].to_csv(tmp_path / "runs.csv", index=False)
    # the run the recommendation proposes: the validation of both aims at it, so the same folds and weights
    alloc = recj["allocation"]
    pd.DataFrame({"params": [alloc["n_opt"]["value"]], "tokens": [alloc["d_opt"]["value"]]}).to_csv(
        tmp_path / "planned.csv", index=False)
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "runs.csv"), "--params", "params", "--loss", "loss",
                                   "--tokens", "tokens", "--n-boot", "4", "--predict", str(tmp_path / "planned.csv"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)["families"]
    assert cli["chosen"] == fam["chosen"] and cli["weights"] == pytest.approx(fam["weights"])
    assert [r["mape"] for r in cli["validation"]] == pytest.approx([r["mape"] for r in fam["validation"]])


def test_the_demo_says_when_the_families_disagree_on_n_opt():
    from medscale.scaling.demo import families_lines

    warning = "the laws disagree on N_opt at 1e+15 FLOPs beyond their own intervals (chinchilla 2e6 [1.9e6, 2.1e6])"
    fits = {"objectives": {"decoder": {"families": {
        "chosen": "kaplan", "weights": {"chinchilla": 0.25, "kaplan": 0.75}, "budget": 1e15,
        "compute_convention": "6nd", "n_opt": {"value": 3e6, "interval": [1.9e6, 4.2e6], "warnings": [warning]}}}}}
    lines = families_lines(fits)
    assert lines[0].startswith("decoder across law families (weights from their error on held-out costlier runs: "
                               "chinchilla 0.25, kaplan 0.75; chosen kaplan)")
    assert "N_opt at 1e+15 FLOPs = 3e+06 [1.9e+06, 4.2e+06] params (6ND FLOP count)" in lines[0]
    assert lines[1] == f"  warning: {warning}"
    assert families_lines({"objectives": {"decoder": {"families": {"not_fitted": "too few runs"}}}}) == [
        "decoder: law families not fitted: too few runs"]


# ---------------------------------------------------------------------------------------------
# rich output when it is not a terminal
# ---------------------------------------------------------------------------------------------

def test_text_is_not_wrapped_and_progress_bars_are_not_drawn_when_output_is_not_a_terminal(monkeypatch):
    from medscale.scaling import cli

    piped = StringIO()
    console = cli._Console(file=piped, width=40)
    long = "a value = " + "+0.001332 " * 20 + "and a sentence that ends here."
    console.print(long)
    assert piped.getvalue() == long + "\n"

    monkeypatch.setattr(cli, "console", console)
    with cli._progress_bar("stage") as progress:
        task = progress.add_task("simulating", total=10)
        progress.update(task, completed=3)
    with cli.RichReporter().sweep("grid") as show:
        show(type("P", (), {"done": 1, "running": 0, "failed": 0, "diverged": 0, "line": lambda self: "1/4 done"})())
    assert piped.getvalue() == long + "\n" + "sweep grid: 1/4 done\n"  # no bar, no live display

    terminal = StringIO()
    monkeypatch.setattr(cli, "console", cli._Console(file=terminal, force_terminal=True, width=100))
    with cli._progress_bar("stage") as progress:
        task = progress.add_task("simulating", total=10)
        progress.update(task, completed=3)  # the work ended before its last callback: the bar still ends full
    assert "10/10" in terminal.getvalue()
