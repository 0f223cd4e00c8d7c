"""Tracker tests: warnings are collected per test."""

from __future__ import annotations

import pytest

from tunepilot.tracking.base import reset_warnings


@pytest.fixture
def warnings_seen():
    """Tracker warnings, injected (the default goes to the `tunepilot.tracking` logger)."""
    reset_warnings()
    seen: list[str] = []
    return seen
