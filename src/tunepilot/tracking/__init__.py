"""Experiment tracking: MLflow, TensorBoard and W&B as run observers fed by the metrics stream.

    observers_for(config)                    # one observer per `report_to` name; the run recorder adds them
    sweep_tracker(spec, base, sweep_dir)     # a sweep's parent run; on_sweep_end tags states and the best

Engines never call a tracker: the run recorder shows every record to its observers, and these are
observers like the health monitor. A tracker that fails warns once and the run goes on
(`tunepilot.tracking.base`). Adding a tracker is one module with a backend class and one line in
`BACKENDS`. This package imports no tracking library until a tracker starts.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:class" of its backend (imported when a run uses it)
BACKENDS: dict[str, str] = {
    "mlflow": "tunepilot.tracking.mlflow:MlflowBackend",
    "tensorboard": "tunepilot.tracking.tensorboard:TensorBoardBackend",
    "wandb": "tunepilot.tracking.wandb:WandbBackend",
}


def backend(name: str):
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def observers_for(config: Any, warn=None) -> list:
    """The tracker observers a run's config asks for (`report_to`); empty for none."""
    import os

    from tunepilot.tracking.base import TrackerObserver

    if int(os.environ.get("RANK", "0")) != 0:  # several processes train one run: rank 0 reports it
        return []
    settings = config.tracking
    return [TrackerObserver(backend(name), settings, warn) for name in settings.report_to]


def sweep_tracker(spec: Any, base: Any, sweep_dir, name: str | None = None, warn=None):
    from tunepilot.tracking.sweep import sweep_tracker as make

    return make(spec, base, sweep_dir, name, warn)


__all__ = ["BACKENDS", "observers_for", "sweep_tracker"]
