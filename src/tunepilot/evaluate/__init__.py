"""Task evaluation by generation: metrics, batched generation, and `evaluate_model` as an objective.

    from tunepilot.evaluate import TaskObjective, evaluate_model, build_metric, register_metric

The names are resolved on first use: `tunepilot.config` imports `tunepilot.evaluate.settings`, and an
eager import of the runner here (which reads the data package, which reads the config) would be
circular.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalSettings": "tunepilot.evaluate.settings",
    "EvalExample": "tunepilot.evaluate.examples",
    "EvalScores": "tunepilot.evaluate.runner",
    "evaluate_model": "tunepilot.evaluate.runner",
    "write_results": "tunepilot.evaluate.runner",
    "TaskObjective": "tunepilot.evaluate.objective",
    "load_examples": "tunepilot.evaluate.data",
    "build_metric": "tunepilot.evaluate.metrics",
    "register_metric": "tunepilot.evaluate.metrics",
    "Metric": "tunepilot.evaluate.metrics",
    "Scored": "tunepilot.evaluate.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunepilot.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
