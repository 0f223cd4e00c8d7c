"""Weights & Biases: one W&B run per tunepilot run, offline unless configured.

Mode: `tracking.wandb_mode`, else WANDB_MODE, else offline: the run is written under
`<run dir>/wandb/` and `wandb sync` uploads it later. A trial of a sweep joins the sweep's group
(`tracking.json` in the sweep directory). Each run is its own `wandb.Run` object
(`reinit="create_new"`), so packed trials in one process do not share one. Console capture, git and
system stats are off: the run's own stream is what is logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunepilot.stream import Event
from tunepilot.tracking.artifacts import curves_png
from tunepilot.tracking.base import RunContext, require
from tunepilot.tracking.mlflow import summary_metrics, summary_tags

DEFAULT_PROJECT = "tunepilot"


class WandbBackend:
    name = "wandb"

    def __init__(self) -> None:
        self.run = None
        self.ctx: RunContext | None = None
        self.alerts: list[str] = []

    def start(self, ctx: RunContext) -> None:
        wandb = require("wandb", "wandb")
        self.ctx = ctx
        s = ctx.settings
        directory = ctx.run_dir or Path.cwd()
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            console="off",
            silent=True,
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_machine_info=True,
        )
        self.run = wandb.init(
            mode=s.wandb_mode or os.environ.get("WANDB_MODE") or "offline",
            project=s.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=s.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
            group=ctx.parent.get("group"),
            job_type="trial" if ctx.trial is not None else "train",
            name=ctx.run_name,
            dir=str(directory),
            config=ctx.params,
            tags=[ctx.tags["tunepilot.engine"]],
            reinit="create_new",
            settings=settings,
        )

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_event(self, event: Event) -> None:
        self.alerts.append(f"step {event.step} {event.code}: {event.message}")

    def end(self, summary: Any) -> None:
        self.run.summary.update({**summary_metrics(summary), **summary_tags(summary), "alerts": self.alerts})
        png = curves_png(self.ctx.run_dir) if self.ctx.run_dir is not None else None
        if png is not None:
            import wandb

            self.run.log({"curves": wandb.Image(str(png))}, step=summary.steps)
        if summary.adapter and Path(summary.adapter).is_dir():
            import wandb

            artifact = wandb.Artifact(f"adapter-{self.run.id}", type="model")
            artifact.add_dir(summary.adapter)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if summary.ok else 1)
