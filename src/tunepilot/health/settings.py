"""Thresholds of the health rules; the same values judge a live run and a finished log."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="Watch the run live and stop it on NaN, collapse or divergence.")
    stop_on_nan: bool = Field(True, description="Stop when the loss or grad norm is NaN or infinite.")
    stop_on_divergence: bool = Field(True, description="Stop when the loss diverges.")
    divergence_factor: float = Field(3.0, gt=1, description="Diverged: smoothed loss above this x its minimum.")
    divergence_patience: int = Field(5, gt=0, description="Steps the divergence must last before stopping.")
    spike_factor: float = Field(2.5, gt=1, description="Spike: a step's loss above this x the recent median.")
    grad_norm_factor: float = Field(10.0, gt=1, description="Grad-norm alert: above this x its recent median.")
    min_points: int = Field(8, gt=0, description="Fewer train steps than this are too few to judge.")
