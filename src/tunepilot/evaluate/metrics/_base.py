"""The metric contract and its registry.

A metric scores one prediction against one reference (`score`), then folds the per-record scores
into aggregate numbers (`aggregate`). The aggregate always holds a key equal to the metric's name:
that number is what `evaluate` prints first and what a run or sweep optimises. Metrics are pure:
no model, no files (a label set is given when the metric is built).

A new metric is one class plus one `@register_metric(...)` line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tunepilot.errors import UserError
from tunepilot.registry import register_once

Direction = Literal["maximize", "minimize"]


class BadReference(ValueError):
    """A reference the metric cannot read (no number, not JSON, not a label): a data problem.

    The caller knows which record it came from and turns it into a UserError naming file:line.
    """


@dataclass(frozen=True)
class Scored:
    """One record's result."""

    score: float  # the record's value of the metric, 0..1 for the built-ins
    extracted: str | None = None  # what was compared: the number found, the label matched, the JSON parsed
    note: str | None = None  # why it missed when that is not obvious: "invalid JSON", "no number"
    counts: dict[str, float] = field(default_factory=dict)  # summed by aggregate (tp/fp/fn, flags)


@dataclass(frozen=True)
class MetricContext:
    """What a metric may need beyond the prediction and reference."""

    labels: tuple[str, ...] = ()  # the allowed answers, for label accuracy


class Metric:
    """Base: the aggregate is the mean per-record score, under the metric's name."""

    name: str = "metric"
    direction: Direction = "maximize"

    def score(self, prediction: str, reference: str) -> Scored:
        raise NotImplementedError

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float]:
        n = len(scored)
        return {self.name: (sum(s.score for s in scored) / n) if n else 0.0}


MetricFactory = Callable[[MetricContext], Metric]
_REGISTRY: dict[str, MetricFactory] = {}
_ALIASES: dict[str, str] = {}


def register_metric(name: str, *aliases: str) -> Callable[[MetricFactory], MetricFactory]:
    """Register a metric class (or factory taking a MetricContext) under a name and aliases."""

    def deco(factory: MetricFactory) -> MetricFactory:
        register_once(_REGISTRY, name, factory, "metric")
        for alias in aliases:
            register_once(_ALIASES, alias, name, "metric alias")
        return factory

    return deco


def metric_names() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    return _ALIASES.get(name, name)


def build_metric(name: str, context: MetricContext | None = None) -> Metric:
    """A metric by registry name or alias, or a custom `module:function` / `path.py:function`."""
    context = context or MetricContext()
    if ":" in name:
        from tunepilot.evaluate.metrics._custom import load_custom_metric

        return load_custom_metric(name)
    factory = _REGISTRY.get(canonical_name(name))
    if factory is None:
        known = ", ".join(metric_names())
        raise UserError(f"metric {name!r} is unknown; use one of {known}, or a custom 'module:function'")
    return factory(context)
