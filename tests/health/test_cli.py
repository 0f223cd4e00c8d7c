"""`tunepilot diagnose` in-process: exit codes, the JSON envelope, the plot."""

from __future__ import annotations

import json

from streams import FIXTURES
from typer.testing import CliRunner

from tunepilot.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["diagnose", *map(str, args)])


def test_healthy_run_exits_0():
    result = invoke(FIXTURES / "hf_distilbert_imdb_lora")
    assert result.exit_code == 0 and "healthy" in result.stdout


def test_overfitting_exits_1_with_the_json_envelope():
    result = invoke(FIXTURES / "lf_qwen25_7b_medical_qlora", "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert (out["version"], out["command"], out["ok"], out["exit_code"]) == (1, "diagnose", False, 1)
    assert out["verdict"] == "overfitting"
    assert out["findings"][0]["code"] == "overfitting" and out["findings"][0]["evidence"]["from_step"] == 4500
    first = out["recommendations"][0]
    assert (first["key"], first["before"], first["after"]) == ("num_train_epochs", 3.0, 2.0)
    assert out["patch"]["early_stopping_patience"] == 2 and out["run"]["source"] == "llamafactory"


def test_text_output_shows_the_yaml_patch_and_set_args():
    result = invoke(FIXTURES / "lf_qwen25_7b_medical_qlora")
    assert "num_train_epochs: 3.0 -> 2.0" in result.stdout
    assert "config patch (YAML):" in result.stdout and "--set num_train_epochs=2.0" in result.stdout


def test_unreadable_input_exits_2(tmp_path):
    garbage = tmp_path / "log.txt"
    garbage.write_text("hello")
    result = invoke(garbage, "--json")
    assert result.exit_code == 2 and str(garbage) in json.loads(result.stdout)["error"]["message"]
    assert invoke(tmp_path / "missing").exit_code == 2
    assert invoke(FIXTURES / "hf_distilbert_imdb_lora", "--method", "qlora").exit_code == 2


def test_no_training_data_exits_1():
    result = invoke(FIXTURES / "lf_qwen3_14b_no_points", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["verdict"] == "no-training-data"


def test_plot_writes_a_png(tmp_path):
    target = tmp_path / "plots" / "run.png"
    result = invoke(FIXTURES / "lf_qwen25_7b_medical_qlora", "--plot", target, "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["plot"] == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000


def test_method_and_size_options_feed_the_lr_check():
    result = invoke(FIXTURES / "hf_distilbert_imdb_lora", "--method", "full", "--num-params", "70B", "--json")
    out = json.loads(result.stdout)
    assert any(f["code"] == "lr_range" for f in out["findings"]) and out["verdict"] == "healthy"
    assert result.exit_code == 0
