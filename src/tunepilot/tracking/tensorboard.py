"""TensorBoard: event files in the run directory (`<run dir>/tensorboard`, or `tracking.tensorboard_dir`),
written with torch's SummaryWriter. `tensorboard --logdir <sweep dir>` shows every trial side by side.

Scalars under the names every tracker uses (train/loss, train/learning_rate, eval/loss, ...); health
alerts and stops as text at their step; the summary and the config as text at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunepilot.stream import Event
from tunepilot.tracking.base import RunContext, TrackingFailed, require


def log_dir(ctx: RunContext) -> Path:
    if ctx.settings.tensorboard_dir:
        base = Path(ctx.settings.tensorboard_dir)
        return base / ctx.run_name if ctx.trial is not None else base
    if ctx.run_dir is None:
        raise TrackingFailed("a run without a directory needs tracking.tensorboard_dir")
    return ctx.run_dir / "tensorboard"


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self) -> None:
        self.writer = None

    def start(self, ctx: RunContext) -> None:
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir(ctx)), purge_step=ctx.resumed_from + 1 or None)
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(ctx.params.items()))  # markdown code block
        self.writer.add_text("config", text, ctx.resumed_from)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_event(self, event: Event) -> None:
        self.writer.add_text(f"events/{event.code}", f"{event.severity}: {event.message}", event.step)

    def end(self, summary: Any) -> None:
        text = json.dumps(summary.to_json(), indent=2, default=str)
        self.writer.add_text("summary", "\n".join("    " + line for line in text.splitlines()), summary.steps)
        self.writer.close()
