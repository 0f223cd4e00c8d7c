"""A LoRA rank larger than a targeted layer (min of its in and out features) is refused before any
training, with the key path: by `train` from the run config, by `sweep` from the base or the space."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_contract import assert_user_error, run_cli


@pytest.fixture
def data(tmp_path):
    from tunepilot.testing import write_arithmetic_chat

    return write_arithmetic_chat(tmp_path / "train.jsonl", 8)


def _config(tmp_path, model, data, **method):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model)},
                "data": {"train": str(data)},
                "method": method,
                "train": {"device": "cpu", "max_steps": 1},
                "output": {"output_dir": str(tmp_path / "run")},
            }
        )
    )
    return path


def _shapes(model):
    raw = json.loads((model / "config.json").read_text())
    kv = raw["num_key_value_heads"] * raw["head_dim"]
    return raw["hidden_size"], kv  # the tiny model: k_proj and v_proj map hidden -> kv, the narrowest layers


def test_train_rank_larger_than_every_targeted_layer(tmp_path, tiny_model, data):
    hidden, kv = _shapes(tiny_model)
    out = run_cli("train", _config(tmp_path, tiny_model, data, lora_rank=4 * hidden))
    assert_user_error(out, "method.lora_rank", str(4 * hidden), "k_proj", f"lora_rank <= {kv}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training


def test_train_rank_larger_than_some_targeted_layers_names_them(tmp_path, tiny_model, data):
    hidden, kv = _shapes(tiny_model)
    assert kv < hidden
    out = run_cli("train", _config(tmp_path, tiny_model, data, lora_rank=kv + 1))
    assert_user_error(out, "method.lora_rank", f"k_proj ({hidden} -> {kv})", "v_proj", "leave those layers out")
    assert "q_proj" not in out.message


def test_rank_at_the_limit_of_the_targeted_layers_is_accepted(tmp_path, tiny_model, data):
    hidden, kv = _shapes(tiny_model)
    out = run_cli("train", _config(tmp_path, tiny_model, data, lora_rank=hidden, lora_target="q_proj,o_proj"))
    assert out.code == 0, out.envelope


def _sweep(tmp_path, model, data, space, **method):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(_config(tmp_path, model, data, **method)),
                "space": space,
                "budget": {"n_trials": 1},
            }
        )
    )
    return path


def test_sweep_space_rank_larger_than_the_layers(tmp_path, tiny_model, data):
    hidden, kv = _shapes(tiny_model)
    path = _sweep(tmp_path, tiny_model, data, {"lora_rank": [4, 2 * hidden]})
    out = run_cli("sweep", path, "--dir", tmp_path / "sw")
    assert_user_error(out, "space.lora_rank", str(2 * hidden), f"lora_rank <= {kv}")
    assert not (tmp_path / "sw" / "trials").exists()


def test_sweep_space_rank_range_above_the_layers(tmp_path, tiny_model, data):
    _, kv = _shapes(tiny_model)
    path = _sweep(tmp_path, tiny_model, data, {"lora_rank": {"low": 2, "high": 4 * kv}})
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "space.lora_rank", str(4 * kv))


def test_sweep_base_rank_larger_than_the_layers(tmp_path, tiny_model, data):
    hidden, _ = _shapes(tiny_model)
    path = _sweep(tmp_path, tiny_model, data, {"learning_rate": [1e-3]}, lora_rank=2 * hidden)
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "base.method.lora_rank")
