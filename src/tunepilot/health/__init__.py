"""Health of a training run: rules over the metrics stream, the live monitor, `diagnose`.

    from tunepilot.health import diagnose, LiveMonitor, HealthSettings

The names are loaded on first use: `tunepilot.config` imports `HealthSettings` from here, and a
config load should not pay for the rules, the log readers and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HealthSettings": "tunepilot.health.settings",
    "diagnose": "tunepilot.health.diagnose",
    "Diagnosis": "tunepilot.health.diagnose",
    "LiveMonitor": "tunepilot.health.monitor",
    "Finding": "tunepilot.health.findings",
    "Change": "tunepilot.health.findings",
    "VERDICTS": "tunepilot.health.findings",
    "RULES": "tunepilot.health.rules",
    "rule": "tunepilot.health.registry",
    "run_rules": "tunepilot.health.registry",
    "RunView": "tunepilot.health.series",
    "plot_run": "tunepilot.health.plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunepilot.health' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
