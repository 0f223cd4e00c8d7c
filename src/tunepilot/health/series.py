"""The records seen as curves, computed once per rule pass: the view every rule reads.

Smoothing is a trailing median: robust to single spikes (a mean is not), and trailing so that a
value at step t depends only on steps <= t. That keeps the live monitor and `diagnose` in agreement:
a finished log is judged exactly as the live run was at its last step.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from tunepilot.health.settings import HealthSettings
from tunepilot.stream import EvalPoint, Record, TrainStep


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def trailing_median(values: Sequence[float], window: int) -> list[float]:
    return [median(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def auto_window(n: int, setting: int = 0) -> int:
    """A tenth of the points, between 3 and 25: wide enough to smooth noise, narrow enough to follow."""
    return setting if setting > 0 else max(3, min(25, n // 10))


@dataclass
class RunView:
    train: list[TrainStep]  # every train record with a loss value (finite or not), by step
    steps: list[int]  # steps of the finite train losses
    losses: list[float]  # the finite train losses
    trend: list[float]  # trailing median of `losses`
    evals: list[EvalPoint]  # every eval record
    eval_steps: list[int]  # steps of the finite eval losses
    eval_losses: list[float]
    window: int
    settings: HealthSettings
    method: str | None = None
    learning_rate: float | None = None  # configured, else the peak logged
    num_params: int | None = None
    planned_steps: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, records: Sequence[Record], settings: HealthSettings, **meta: Any) -> RunView:
        train = [r for r in records if isinstance(r, TrainStep) and r.loss is not None]
        evals = [r for r in records if isinstance(r, EvalPoint)]
        good = [r for r in train if finite(r.loss)]
        losses = [r.loss for r in good]
        window = auto_window(len(losses), settings.smooth_window)
        good_evals = [e for e in evals if finite(e.eval_loss)]
        if meta.get("learning_rate") is None:
            logged = [r.lr for r in train if finite(r.lr)]
            meta["learning_rate"] = max(logged) if logged else None
        return cls(
            train=train,
            steps=[r.step for r in good],
            losses=losses,
            trend=trailing_median(losses, window),
            evals=evals,
            eval_steps=[e.step for e in good_evals],
            eval_losses=[e.eval_loss for e in good_evals],
            window=window,
            settings=settings,
            **meta,
        )

    @property
    def n(self) -> int:
        return len(self.losses)

    def start_level(self) -> float:
        """Loss at the start: the median of the first 3 points (not of a whole window: a run that
        converges within its first window would otherwise seem to have started where it ended)."""
        return median(self.losses[:3])

    def end_level(self) -> float:
        return median(self.losses[-self.window :])

    def train_level_at(self, step: int) -> float | None:
        """Smoothed train loss at a step: the last trend value at or before it (the first one when the
        step comes before any logged train loss, as an eval at step 0 or a first log after the eval)."""
        if not self.trend:
            return None
        return self.trend[max(0, bisect_right(self.steps, step) - 1)]

    def epoch_at(self, step: int) -> float | None:
        epochs = [(abs(r.step - step), r.epoch) for r in (*self.train, *self.evals) if finite(r.epoch)]
        return min(epochs)[1] if epochs else None

    def config_value(self, key: str) -> Any:
        if key == "learning_rate" and self.config.get(key) is None:
            return self.learning_rate
        return self.config.get(key)


def rel(value: float, base: float) -> float:
    """(value - base) / |base|, 0 when base is 0."""
    return (value - base) / abs(base) if base else 0.0


def sig(x: float, digits: int = 3) -> float:
    """x rounded to significant digits, for evidence that reads well."""
    if not finite(x) or x == 0:
        return x
    return round(x, -int(math.floor(math.log10(abs(x)))) + digits - 1)


def size_text(n: float) -> str:
    """7B, 135M, 49K: a parameter count as people say it."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{sig(n / scale, 2):g}{unit}"
    return f"{n:g}"
