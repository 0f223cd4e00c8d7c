"""Tiny-model run configs shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunepilot.config import RunConfig, build_config
from tunepilot.testing import write_arithmetic_chat


def write_chat_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    return write_arithmetic_chat(path, n, seed, answer="{a} + {b} = {c}. #### {c}")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return write_chat_jsonl(root / "train.jsonl", 48), write_chat_jsonl(root / "eval.jsonl", 8, seed=1)


@pytest.fixture
def tiny_config(tiny_model, tiny_data, tmp_path):
    def make(**overrides) -> RunConfig:
        raw = {
            "model_name_or_path": str(tiny_model),
            "dataset": str(tiny_data[0]),
            "eval_dataset": str(tiny_data[1]),
            "cutoff_len": 64,
            "max_steps": 12,
            "per_device_train_batch_size": 4,
            "learning_rate": 3e-3,
            "eval_steps": 4,
            "lora_rank": 4,
            "lora_dropout": 0.1,
            "output_dir": str(tmp_path / "run"),
            "warmup_ratio": 0.1,
        }
        raw.update(overrides)
        config, _ = build_config(raw)
        return config

    return make
