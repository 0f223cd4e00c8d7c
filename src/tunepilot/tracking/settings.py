"""Tracking settings: which trackers a run reports to, and where (the `tracking` config section).

`report_to` is the HF `TrainingArguments` / LLaMA-Factory key and reads the same: a name or a list
of `mlflow`, `tensorboard`, `wandb`, or `none`. Every location is optional: unset, each tool's own
environment variable decides (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT,
WANDB_ENTITY, WANDB_MODE), and without one the tracker stays offline (an SQLite store in the run or
sweep directory, W&B offline, TensorBoard event files in the run directory).

Credentials never live in a config: a URI with a password in it is refused, because the config is
written to config.yaml and logged as params. Tools read their tokens from their own environment
variables (MLFLOW_TRACKING_TOKEN, WANDB_API_KEY).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRACKERS = ("mlflow", "tensorboard", "wandb")


class TrackingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    report_to: list[Literal["mlflow", "tensorboard", "wandb"]] = Field(
        [], description="Trackers: mlflow, tensorboard, wandb (a name, a list, all or none)."
    )
    run_name: str | None = Field(None, description="Tracker run name; default: the run directory's name.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow store or server; default MLFLOW_TRACKING_URI, else sqlite in the run dir."
    )
    mlflow_experiment_name: str | None = Field(
        None, description="MLflow experiment; default MLFLOW_EXPERIMENT_NAME, else tunepilot."
    )
    wandb_project: str | None = Field(None, description="W&B project; default WANDB_PROJECT, else tunepilot.")
    wandb_entity: str | None = Field(None, description="W&B entity (team); default WANDB_ENTITY.")
    wandb_mode: Literal["offline", "online"] | None = Field(
        None, description="W&B mode; default WANDB_MODE, else offline (sync later with `wandb sync`)."
    )
    tensorboard_dir: str | None = Field(None, description="TensorBoard event files; default <run dir>/tensorboard.")
    flush_timeout: float = Field(
        30.0, ge=0, description="Seconds a finished run waits for a slow tracker to send what it queued."
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if v is None:
            return []
        names = [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v
        if not isinstance(names, list):
            return names
        if names in (["all"],):
            return list(TRACKERS)
        if names == ["none"]:
            return []
        if "none" in names or "all" in names:
            raise ValueError("none and all stand alone; list trackers by name (mlflow, tensorboard, wandb)")
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"{', '.join(map(str, unknown))}: tunepilot reports to {', '.join(TRACKERS)} or none")
        return names

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v and urlsplit(v).password:
            raise ValueError(
                "holds a password; remove it from the URI and set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead"
            )
        return v
