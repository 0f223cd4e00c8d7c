"""MLflow: one MLflow run per tunepilot run, through `MlflowClient` (explicit run ids, no global
active run, so K packed trials in one process each keep their own run).

Where: `tracking.mlflow_tracking_uri`, else MLFLOW_TRACKING_URI, else an SQLite store in the run
directory (`sqlite:///<run dir>/mlflow.db`, artifacts beside it in `mlartifacts/`): offline first.
A trial of a sweep goes to the sweep's store as a nested run of the sweep's parent run
(`tracking.json` in the sweep directory says which; see `tunepilot.tracking.sweep`).

Logged: the resolved config as params, every train and eval record with its step, health alerts and
stops as tags, the summary (tags, metrics, summary.json), and the adapter and curves PNG as artifacts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tunepilot.stream import Event
from tunepilot.tracking.artifacts import curves_png
from tunepilot.tracking.base import RunContext, TrackingFailed, check_reachable, require

DEFAULT_EXPERIMENT = "tunepilot"
_FLUSH_EVERY = 200  # metrics buffered before one log_batch (MLflow takes up to 1000)
_FLUSH_SECONDS = 5.0


def default_uri(directory: Path) -> str:
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def resolve_uri(settings: Any, directory: Path | None) -> str:
    uri = settings.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if directory is None:
        raise TrackingFailed("a run without a directory needs tracking.mlflow_tracking_uri")
    return default_uri(directory)


def open_experiment(uri: str, name: str | None, artifact_root: Path | None):
    """A client and experiment id; a local SQLite store keeps its artifacts beside the database."""
    mlflow = require("mlflow", "mlflow-skinny")
    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and artifact_root is not None:
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client, client.create_experiment(name, artifact_location=location)


def status_of(summary: Any) -> str:
    if summary.status == "interrupted":
        return "KILLED"
    return "FAILED" if summary.status in ("failed", "stopped") else "FINISHED"


def summary_tags(summary: Any) -> dict[str, str]:
    tags = {"tunepilot.status": summary.status}
    if summary.failure is not None:
        tags["tunepilot.failure"] = summary.failure.value
    if summary.stop_reason is not None:
        tags["tunepilot.stop_reason"] = f"{summary.stop_reason.code}: {summary.stop_reason.message}"
    return tags


def summary_metrics(summary: Any) -> dict[str, float]:
    values = {
        "summary/steps": summary.steps,
        "summary/tokens": summary.tokens,
        "summary/seconds": summary.seconds,
        "summary/tokens_per_second": summary.tokens_per_second,
        "summary/best_eval_loss": summary.best_eval_loss,
        "summary/peak_memory_mb": summary.peak_memory_mb,
        f"summary/best_{summary.objective.name}": summary.objective.best,
    }
    return {k: float(v) for k, v in values.items() if v is not None}


class MlflowBackend:
    name = "mlflow"

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None
        self.ctx: RunContext | None = None
        self._buffer: list = []
        self._last_flush = time.monotonic()

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        parent = ctx.parent
        uri = parent.get("tracking_uri") or resolve_uri(ctx.settings, ctx.run_dir)
        self.client, experiment_id = open_experiment(
            uri, parent.get("experiment_name") or ctx.settings.mlflow_experiment_name, ctx.run_dir
        )
        from mlflow.entities import Param

        tags = dict(ctx.tags)
        if parent.get("parent_run_id"):
            tags["mlflow.parentRunId"] = parent["parent_run_id"]
        run = self.client.create_run(experiment_id, run_name=ctx.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in sorted(ctx.params.items())]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, v, now, step) for k, v in metrics.items())
        if len(self._buffer) >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_event(self, event: Event) -> None:
        self._flush()
        key = "tunepilot.stop" if event.code == "stop" else f"tunepilot.event.{event.code}"
        self.client.set_tag(self.run_id, key, f"step {event.step}: {event.message}"[:5000])

    def end(self, summary: Any) -> None:
        from mlflow.entities import Metric, RunTag

        self._flush()
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, summary.steps) for k, v in summary_metrics(summary).items()]
        tags = [RunTag(k, v) for k, v in summary_tags(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self._log_artifacts(summary)
        self.client.set_terminated(self.run_id, status=status_of(summary))

    def _log_artifacts(self, summary: Any) -> None:
        run_dir = self.ctx.run_dir
        if run_dir is None:
            return
        for name in ("summary.json", "config.yaml"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        if summary.adapter and Path(summary.adapter).is_dir():
            self.client.log_artifacts(self.run_id, summary.adapter, Path(summary.adapter).name)
        png = curves_png(run_dir)
        if png is not None:
            self.client.log_artifact(self.run_id, str(png))
