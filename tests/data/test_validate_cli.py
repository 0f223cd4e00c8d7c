"""`tunepilot validate` in-process: exit codes, the JSON envelope, the text summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def run(*args: str):
    return CliRunner().invoke(app, ["validate", *args])


def test_defective_file_exits_1_with_every_finding_in_json(tiny_model):
    result = run(str(FIXTURES / "alpaca_structure.jsonl"), "--model", str(tiny_model), "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["version"] == 1 and body["command"] == "validate" and body["ok"] is False
    assert {"severity", "code", "line", "message"} <= set(body["findings"][0])
    assert body["errors"] == sum(f["severity"] == "error" for f in body["findings"]) == 12
    assert body["counts"]["malformed_line"] == {"severity": "error", "count": 2}
    stats = body["stats"]["train"]
    assert stats["records"] == 3 and stats["tokens"] > 0 and 0 < stats["trainable_share"] < 1


def test_clean_file_exits_0_and_prints_a_summary(tiny_model, jsonl):
    path = jsonl([{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)])
    result = run(str(path), "--model", str(tiny_model), "--cutoff-len", "64")
    assert result.exit_code == 0, result.output
    assert "8 records" in result.stdout and "no errors" in result.stdout and "p50" in result.stdout


def test_text_summary_lists_first_offending_lines():
    result = run(str(FIXTURES / "duplicates.jsonl"))
    assert result.exit_code == 1
    assert "conflicting_duplicate" in result.stdout and "duplicates.jsonl:4" in result.stdout


def test_eval_file_and_column_options(jsonl):
    train = jsonl([{"t": f"text {i}", "c": "a" if i % 2 else "b"} for i in range(6)], "train.jsonl")
    evals = jsonl([{"t": "text 3", "c": "a"}], "eval.jsonl")
    result = run(str(train), "--eval", str(evals), "--column", "prompt=t", "--column", "response=c", "--json")
    body = json.loads(result.stdout)
    assert result.exit_code == 0 and body["files"]["eval"] == str(evals)
    assert [(f["code"], f["line"]) for f in body["findings"]] == [("train_eval_overlap", 1)]


def test_config_supplies_data_settings_and_model(tiny_model, tmp_path, jsonl):
    path = jsonl([{"q": "Why?", "a": "Because."}, {"q": "How?", "a": "Like so."}])
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model}\ndataset: {path}\ncolumns: {{prompt: q, response: a}}\ntemplate: chatml\n"
    )
    body = json.loads(run(str(path), "--config", str(config), "--json").stdout)
    assert body["tokenizer"] == str(tiny_model) and body["template"] == "chatml" and body["ok"]


@pytest.mark.parametrize(
    "name", ["empty.jsonl", "image.jsonl", "unknown_keys.jsonl", "mixed_dir", "mixed_formats", "missing.jsonl"]
)
def test_usage_errors_exit_2(name):
    result = run(str(FIXTURES / name), "--json")
    assert result.exit_code == 2
    body = json.loads(result.stdout)
    assert body["ok"] is False and name.split(".")[0] in body["error"]["message"]


def test_unknown_format_option_exits_2():
    result = run(str(FIXTURES / "misc.jsonl"), "--format", "yaml")
    assert result.exit_code == 2 and "unknown format 'yaml'" in result.output


def test_invalid_option_value_exits_2_naming_the_key():
    result = run(str(FIXTURES / "misc.jsonl"), "--cutoff-len", "0")
    assert result.exit_code == 2 and "cutoff_len: 0 is invalid" in result.output
