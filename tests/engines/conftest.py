"""Tiny-model run configs shared by the engine tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunepilot.config import RunConfig, build_config


def write_chat_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """Hand-made arithmetic Q/A in the messages format: learnable, so a loss can fall."""
    lines = []
    for i in range(n):
        a, b = (i * 7 + seed) % 13, (i * 5 + 3 * seed) % 11
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                              {"role": "assistant", "content": f"{a} + {b} = {a + b}. #### {a + b}"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return write_chat_jsonl(root / "train.jsonl", 48), write_chat_jsonl(root / "eval.jsonl", 8, seed=1)


@pytest.fixture
def tiny_config(tiny_model, tiny_data, tmp_path):
    def make(**overrides) -> RunConfig:
        raw = {"model_name_or_path": str(tiny_model), "dataset": str(tiny_data[0]), "eval_dataset": str(tiny_data[1]),
               "cutoff_len": 64, "max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
               "eval_steps": 4, "lora_rank": 4, "lora_dropout": 0.1, "output_dir": str(tmp_path / "run"),
               "warmup_ratio": 0.1}
        raw.update(overrides)
        config, _ = build_config(raw)
        return config
    return make
