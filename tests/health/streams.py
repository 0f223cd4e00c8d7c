"""Hand-made metric streams: one shape per case, seeded noise, so every rule test shows one thing."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from tunepilot.logs import RunLog
from tunepilot.stream import EvalPoint, Record, TrainStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def train_curve(
    fn: Callable[[int], float], n: int = 200, noise: float = 0.03, seed: int = 0, lr: float = 1e-4, grad: float = 1.0
) -> list[TrainStep]:
    """Train steps 1..n with loss fn(step) times (1 + gaussian noise)."""
    rng = random.Random(seed)
    return [
        TrainStep(
            step=s,
            loss=fn(s) * (1 + rng.gauss(0, noise)),
            lr=lr,
            grad_norm=grad * (1 + rng.gauss(0, 0.1)),
            epoch=s / 100,
        )
        for s in range(1, n + 1)
    ]


def eval_curve(fn: Callable[[int], float], every: int = 20, n: int = 200) -> list[EvalPoint]:
    return [EvalPoint(step=s, eval_loss=fn(s), epoch=s / 100) for s in range(every, n + 1, every)]


def healthy_train(step: int) -> float:
    return 1.0 + 2.0 * math.exp(-step / 40)


def healthy_eval(step: int) -> float:
    return 1.12 + 1.8 * math.exp(-step / 50)


def healthy() -> list[Record]:
    return [*train_curve(healthy_train), *eval_curve(healthy_eval)]


def as_log(records: list[Record], **meta) -> RunLog:
    records = sorted(records, key=lambda r: (r.step, r.kind != "train"))
    return RunLog(records=records, source="test", path=Path("stream.jsonl"), **meta)
