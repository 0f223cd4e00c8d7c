"""The engine interface: an engine runs trials in slots; the search never owns a training loop.

The search (`tunepilot.search`) asks its sampler for trials and hands each to a free slot with
`start`. It then calls `advance`, which trains every active trial up to its next report point and
returns what happened: intermediate `Report`s (the objective at a fraction of the trial's own
schedule) and final `Outcome`s. The pruner decides per report; a pruned trial is ended with `stop`,
and its slot takes the next asked trial.

    standard engine: 1 slot, transformers + PEFT, one trial at a time
    packed engine:   K slots, K LoRA trials on one frozen base model
    replay engine:   any number of slots, reads recorded learning curves (no GPU)

The contract (`Engine`) declares everything the search uses; `tests/engines/test_contract.py`
runs one suite against every engine. Failures are a closed set (`FailureKind`), never free text
to be matched: the sweep retries `oom` with half the micro-batch and `interrupted` as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from tunepilot.engines.summary import FailureKind


@dataclass
class TrialSpec:
    """One trial as the engine sees it."""

    number: int  # the study's trial number
    params: dict[str, Any]  # the sampled hyperparameters, by config key (e.g. "learning_rate")
    config: Any  # engine-specific: a resolved RunConfig, or a replay configuration
    run_dir: Path | None = None  # where the trial writes metrics.jsonl, adapter, summary.json
    report_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Report:
    """An intermediate objective value at `fraction` of the trial's own schedule."""

    number: int
    fraction: float
    step: int
    value: float
    kind: Literal["report"] = "report"


@dataclass
class Outcome:
    """A trial's end: completed, pruned, or failed with a kind and a reason. Costs are always recorded:
    `seconds` is the trial's share of the engine's time (a packed trial: its share of each packed
    pass), so a sweep's trials add up to the time its engine spent."""

    number: int
    state: Literal["complete", "pruned", "failed"]
    value: float | None = None
    reason: str | None = None
    failure: FailureKind | None = None  # set exactly when state == "failed"
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    kind: Literal["outcome"] = "outcome"

    def __post_init__(self) -> None:
        if (self.state == "failed") != (self.failure is not None):
            raise ValueError(f"trial {self.number}: a failed outcome needs a failure kind, and only it")


Progress = Report | Outcome


@runtime_checkable
class Engine(Protocol):
    name: str
    default_metric: str  # what the objective is when the sweep names none

    def supports(self, metric: str) -> bool:
        """Can this engine report `metric` at every report point?"""

    @property
    def seconds(self) -> dict[str, float]:
        """Where the engine's wall time went, by phase (load, train, eval...)."""

    def config_key(self, spec: TrialSpec) -> str | None:
        """What the engine would train for `spec` (equal keys: the same training); None: unknown."""

    @property
    def slots(self) -> int:
        """How many trials can be active at once."""

    @property
    def active(self) -> list[int]:
        """Numbers of the trials currently in a slot."""

    def start(self, spec: TrialSpec) -> None:
        """Put a trial into a free slot (raises if none is free)."""

    def advance(self) -> list[Progress]:
        """Train every active trial to its next report point; a finished trial frees its slot."""

    def stop(self, number: int, reason: str) -> Outcome:
        """End an active trial early (pruned); frees its slot."""

    def close(self) -> None:
        """Release the model and any other resources."""


def resolved_config_key(spec: TrialSpec) -> str | None:
    """A trial's resolved config without its output directory: equal keys train the same thing."""
    if not hasattr(spec.config, "model_dump"):
        return None
    raw = spec.config.model_dump(mode="json")
    raw.get("output", {}).pop("output_dir", None)
    return json.dumps(raw, sort_keys=True)
