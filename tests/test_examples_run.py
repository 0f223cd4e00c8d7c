"""The shipped examples run from any working directory: their data paths are relative to the example
file, their output_dir to where you run. Trained for two steps on the tiny model (`--set` only swaps the
model and shortens the run), from a directory that is neither the repository nor examples/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("name", "output_dir"),
    [("llamafactory_qwen_lora_sft.yaml", "saves/qwen-lora-sft"), ("quickstart.yaml", "runs/quickstart")],
)
def test_a_shipped_example_trains_from_another_directory(
    name, output_dir, tmp_path, tiny_model, shared_data, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["train", str(EXAMPLES / name), "--set", f"model_name_or_path={tiny_model}", "--set", "max_steps=2"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert (
        env["ok"] and env["steps"] == 2 and env["data"]["train"]["records"] > 0 and env["data"]["eval"]["records"] > 0
    )
    run = elsewhere / output_dir
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "summary.json").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    paths = [v for k, v in resolved["data"].items() if k in ("train", "eval", "dataset_dir") and v and "/" in v]
    assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)  # read next to the example
