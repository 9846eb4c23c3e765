"""`medscale generate` and `medscale tokenize` from the command line: a user's data error is one
message and exit status 2, never a traceback."""
import pyarrow.parquet as pq
from typer.testing import CliRunner

from medscale.scaling.cli import app


def test_generate_then_tokenize(tmp_path):
    runner = CliRunner()
    gen = runner.invoke(app, ["generate", "--subjects", "60", "--seed", "3", "--out", str(tmp_path / "meds")])
    assert gen.exit_code == 0, gen.output
    assert list((tmp_path / "meds" / "data").rglob("*.parquet"))
    tok = runner.invoke(app, ["tokenize", str(tmp_path / "meds"), "--out", str(tmp_path / "tokens"), "--min-count", "1"])
    assert tok.exit_code == 0, tok.output
    assert "vocabulary" in tok.output and (tmp_path / "tokens" / "manifest.json").exists()


def test_tokenize_reports_a_missing_column_with_status_2(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["generate", "--subjects", "40", "--out", str(tmp_path / "meds")]).exit_code == 0
    shard = sorted((tmp_path / "meds" / "data").rglob("*.parquet"))[0]
    table = pq.read_table(shard)
    pq.write_table(table.drop(["code"]), shard)
    result = runner.invoke(app, ["tokenize", str(tmp_path / "meds"), "--out", str(tmp_path / "tokens")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert shard.name in text and "code" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "tokens" / "manifest.json").exists()


def test_tokenize_of_a_folder_without_meds_data(tmp_path):
    result = CliRunner().invoke(app, ["tokenize", str(tmp_path), "--out", str(tmp_path / "tokens")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(tmp_path) in " ".join(result.output.split())


def test_every_option_and_argument_has_help():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, f"medscale {name} has no description"
        for param in command.params:
            assert getattr(param, "help", None), f"medscale {name}: {param.name} has no help text"


def test_tokenize_takes_every_tokenizer_key_of_the_spec(tmp_path):
    import json

    runner = CliRunner()
    assert runner.invoke(app, ["generate", "--subjects", "40", "--seed", "1", "--out", str(tmp_path / "meds")]).exit_code == 0
    result = runner.invoke(app, ["tokenize", str(tmp_path / "meds"), "--out", str(tmp_path / "tok"), "--min-count", "1",
                                 "--time-scheme", "interval", "--values", "fused", "--no-demographics"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "tok" / "manifest.json").read_text())["config"]
    assert (config["time_scheme"], config["value_scheme"], config["demographics"]) == ("interval", "fused", False)
    bad = runner.invoke(app, ["tokenize", str(tmp_path / "meds"), "--out", str(tmp_path / "tok2"), "--values", "mixed"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "value_scheme" in bad.output
    assert not (tmp_path / "tok2").exists()
