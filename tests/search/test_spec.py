"""Sweep files: every mistake named by its key path, all at once, exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.errors import UserError
from tunepilot.search.space import config_updates, distributions
from tunepilot.search.spec import load_sweep, parse_sweep


def write(tmp_path, spec: dict, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_all_problems_at_once_with_key_paths():
    raw = {
        "space": {
            "learning_rat": {"low": 1e-5, "high": 1e-3},
            "lora_rank": [],
            "lora_dropout": {"low": 0.2, "high": 0.1},
        },
        "sampler": "annealing",
        "budget": {"n_trials": 0, "gpu_hour": 1},
        "protocol": "magic",
        "engine": "warp",
    }
    with pytest.raises(UserError) as e:
        parse_sweep(raw, "s.yaml")
    text = "\n".join(e.value.problems)
    for needle in (
        "sampler: name 'annealing'",
        "budget.n_trials",
        "budget.gpu_hour: unknown key",
        "protocol: name 'magic'",
        "engine: name 'warp'",
        "space.lora_dropout: low (0.2) must be below",
        "space.lora_rank: needs at least one choice",
        "space.learning_rat: unknown hyperparameter",
    ):
        assert needle in text, needle


def test_unknown_space_key_gets_a_suggestion():
    with pytest.raises(UserError) as e:
        parse_sweep({"space": {"learning_rat": [1e-4]}})
    assert e.value.problems == ["space.learning_rat: unknown hyperparameter; did you mean 'learning_rate'?"]


def test_space_becomes_distributions_and_alpha_multiplier_becomes_alpha():
    spec = parse_sweep(
        {
            "space": {
                "learning_rate": {"low": "1e-5", "high": 1e-3, "log": True},
                "lora_rank": [8, 16],
                "lora_alpha_multiplier": [1, 2],
                "max_steps": {"low": 10, "high": 50, "step": 10},
                "lora_target": [["q_proj", "v_proj"], "all-linear"],
            }
        }
    )
    d = distributions(spec)
    assert d["learning_rate"].log and d["max_steps"].step == 10 and type(d["max_steps"]).__name__ == "IntDistribution"
    assert d["lora_target"].choices == ("q_proj,v_proj", "all-linear")
    assert config_updates({"lora_rank": 16, "lora_alpha_multiplier": 2}) == {
        "lora_rank": 16,
        "lora_alpha": 32.0,
    }


def test_base_config_problems_are_prefixed_and_values_checked_against_it(tmp_path):
    write(tmp_path, {"model_name_or_path": "m", "dataset": "missing.jsonl", "learnig_rate": 1}, "train.yaml")
    with pytest.raises(UserError) as e:
        load_sweep(write(tmp_path, {"base": "train.yaml", "space": {"lora_rank": [8]}}))
    assert "base:" in e.value.message and any(p.startswith("base.") for p in e.value.problems)


def test_cli_exit_code_2_and_json_error(tmp_path):
    path = write(tmp_path, {"space": {"lora_rank": [8]}, "pruner": "sometimes"})
    result = CliRunner().invoke(app, ["sweep", str(path), "--json"])
    assert result.exit_code == 2
    body = json.loads(result.stdout)
    assert body["ok"] is False and any(p.startswith("pruner: name") for p in body["error"]["problems"])


def test_every_example_sweep_parses(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    examples = sorted((root / "examples").glob("sweep_*.yaml"))
    assert examples
    for path in examples:
        parse_sweep(yaml.safe_load(path.read_text()), str(path))
