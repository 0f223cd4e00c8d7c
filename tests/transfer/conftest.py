"""Fixture model configs: the published config.json of real model families (no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"


@pytest.fixture(scope="session")
def model_configs() -> Path:
    return CONFIGS
