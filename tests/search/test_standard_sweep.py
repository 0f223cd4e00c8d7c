"""Real sweeps with the standard engine (transformers + PEFT): best.yaml must train with `tunepilot train`."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import load_config
from tunepilot.testing import write_arithmetic_chat


def write_data(path, n: int, seed: int = 0):
    return write_arithmetic_chat(path, n, seed)


def sweep_and_train(tmp_path, base: dict, space: dict, n_trials: int, train_overrides: list[str]):
    sweep = {
        "base": base,
        "space": space,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 2},
        "budget": {"n_trials": n_trials},
        "engine": "standard",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "sw"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    body = json.loads(result.stdout[result.stdout.index("{") :])
    rows = body["leaderboard"]
    assert len(rows) == n_trials and all(r["state"] in ("complete", "pruned") for r in rows), rows
    best = tmp_path / "sw" / "best.yaml"
    config, _ = load_config(best)  # tunepilot's own loader accepts it
    assert config.train.learning_rate == pytest.approx(body["best"]["params"]["learning_rate"])
    assert all(r["steps"] > 0 and r["seconds"] > 0 and r["tokens"] > 0 for r in rows)
    trained = runner.invoke(app, ["train", str(best), "--json", *sum((["--set", o] for o in train_overrides), [])])
    assert trained.exit_code == 0, trained.output[-3000:]
    return body


def test_tiny_model_sweep_writes_a_best_yaml_that_trains(tiny_model, tmp_path):
    base = {
        "model_name_or_path": str(tiny_model),
        "dataset": str(write_data(tmp_path / "train.jsonl", 24)),
        "eval_dataset": str(write_data(tmp_path / "eval.jsonl", 8, seed=1)),
        "cutoff_len": 48,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "lora_rank": 4,
        "device": "cpu",
    }
    space = {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "lora_rank": [4, 8],
        "lora_alpha_multiplier": [1, 2],
    }
    body = sweep_and_train(tmp_path, base, space, 3, ["max_steps=2"])
    config, _ = load_config(tmp_path / "sw" / "best.yaml")
    params = body["best"]["params"]
    assert config.method.lora_alpha == params["lora_alpha_multiplier"] * params["lora_rank"]


@pytest.mark.slow
def test_smollm2_gsm8k_sweep_writes_a_best_yaml_that_trains(smollm2_dir, shared_data, tmp_path):
    gsm8k = shared_data / "gsm8k"
    base = {
        "model_name_or_path": str(smollm2_dir),
        "dataset": str(gsm8k / "train.jsonl"),
        "eval_dataset": str(gsm8k / "test.jsonl"),
        "columns": {"prompt": "question", "response": "answer"},
        "cutoff_len": 96,
        "max_samples": 16,
        "max_eval_samples": 4,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "lora_rank": 4,
        "device": "cpu",
    }
    space = {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}, "lora_rank": [4, 8]}
    body = sweep_and_train(tmp_path, base, space, 4, ["max_steps=1"])
    assert body["objective"] == {"metric": "eval_loss", "direction": "minimize"}
