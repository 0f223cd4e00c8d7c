"""Fixtures for the data tests: tokenizers and a helper writing small data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunepilot.testing import tiny_tokenizer


@pytest.fixture(scope="session")
def tok():
    """The tiny BPE tokenizer with a ChatML chat template (no download, ~0.1 s)."""
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def smol_tok(smollm2_dir):
    """The real SmolLM2-135M-Instruct tokenizer (ChatML with a default system prompt)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path):
    def make(rows: list, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)

    return make
