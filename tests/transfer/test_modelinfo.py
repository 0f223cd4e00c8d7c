from __future__ import annotations

import json

import pytest

from tunepilot.errors import UserError
from tunepilot.modelinfo import read_model_info
from tunepilot.testing import tiny_config

# Parameter counts as the model cards publish them (billions).
PUBLISHED = {
    "Llama-3.2-1B": 1.24,
    "Llama-3.2-3B": 3.21,
    "Llama-3.1-8B": 8.03,
    "Llama-3.1-70B": 70.6,
    "Qwen2.5-0.5B": 0.49,
    "Qwen2.5-1.5B": 1.54,
    "Qwen2.5-3B": 3.09,
    "Qwen2.5-7B": 7.61,
    "Qwen2.5-14B": 14.7,
    "Qwen2.5-32B": 32.5,
    "SmolLM2-135M": 0.1345,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_from_shapes_matches_published(model_configs, name):
    info = read_model_info(model_configs / name)
    assert info.num_params / 1e9 == pytest.approx(PUBLISHED[name], rel=0.012)


def test_families(model_configs):
    assert read_model_info(model_configs / "Llama-3.1-8B").family == "llama"
    assert read_model_info(model_configs / "Qwen2.5-7B").family == "qwen"
    assert read_model_info(model_configs / "Qwen2.5-7B").qkv_bias


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_counts_equal_a_real_model(tmp_path, arch):
    """Shapes-derived counts equal what transformers and PEFT actually build."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, vocab_size=300, hidden=64)
    (tmp_path / "config.json").write_text(config.to_json_string())
    info = read_model_info(tmp_path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert info.num_params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert info.lora_params_per_rank(["q_proj", "v_proj", "down_proj"]) * 4 == trainable


def test_gguf_metadata_matches_published_config(smollm2_gguf, model_configs):
    from_gguf = read_model_info(smollm2_gguf)
    published = read_model_info(model_configs / "SmolLM2-135M")
    assert from_gguf.num_params == published.num_params
    assert from_gguf.tie_word_embeddings and from_gguf.num_kv_heads == 3


def test_missing_and_broken_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        read_model_info(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 8,')
    with pytest.raises(UserError, match="invalid JSON"):
        read_model_info(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match="num_hidden_layers"):
        read_model_info(tmp_path)
