"""Observers: the one hook into a run, in every engine.

    class MyObserver(Observer):
        def on_start(self, info): ...                 # the run's directory, config, trial, plan
        def on_record(self, record, control): ...     # every record of the metrics stream, in order
        def on_end(self, summary): ...                # the typed RunSummary written to summary.json

The run recorder (`engines/recorder.py`) calls them for the standard engine's runs and for each
packed trial alike. An observer may write events into the run's stream (`control.emit`, e.g. a
health alert) and end the run (`control.request_stop`, e.g. the health monitor, lr-find's
divergence check); the engine stops after the current step and records the reason. The health
monitor, lr-find, the CLI's progress display and the experiment trackers (`tunepilot.tracking`)
are all observers; nothing else reaches into an engine's loop.

An observer that raises is a bug in that observer, not in the run: trackers catch their own errors
(a tracker warns once and never stops a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunepilot.stream import Event, Record

if TYPE_CHECKING:
    from tunepilot.engines.summary import RunSummary


@dataclass(frozen=True)
class RunInfo:
    """What an observer learns when a run starts."""

    engine: str  # "standard", "packed"
    run_dir: Path | None
    config: Any  # the resolved RunConfig
    planned_steps: int
    trial: int | None = None  # the study's trial number, in a sweep
    params: dict[str, Any] = field(default_factory=dict)  # the sampled hyperparameters, in a sweep
    resumed_from: int = 0  # the checkpoint step a resumed run continues from


class RunControl(Protocol):
    """What an observer may do to the run it watches."""

    def emit(self, event: Event) -> None:
        """Write an event (an alert, a note) into the run's metrics stream; other observers see it."""

    def request_stop(self, event: Event) -> None:
        """End the run after the current step; `event` is the reason (stream, summary, exit code)."""


class Observer:
    """Base class with no-op hooks: override the ones you need."""

    def on_start(self, info: RunInfo) -> None:
        return None

    def on_record(self, record: Record, control: RunControl) -> None:
        return None

    def on_end(self, summary: RunSummary) -> None:
        return None


class CallbackObserver(Observer):
    """A plain function of each record as an observer (progress bars, tests)."""

    def __init__(self, fn):
        self.fn = fn

    def on_record(self, record: Record, control: RunControl) -> None:
        self.fn(record)
