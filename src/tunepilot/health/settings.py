"""Thresholds of the health rules; the same values judge a live run and a finished log.

Every threshold is relative (a ratio or a share), so one set of defaults serves a 135M LoRA run
logged every step and a 70B full fine-tune logged every 50 steps. The defaults were checked against
real public HF Trainer and LLaMA-Factory logs (tests/fixtures/logs): noisy but healthy curves stay
healthy under them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="Watch the run live and stop it on NaN, collapse or divergence.")
    stop_on_nan: bool = Field(True, description="Stop when the loss or grad norm is NaN or infinite.")
    stop_on_divergence: bool = Field(True, description="Stop when the loss diverges.")
    stop_on_collapse: bool = Field(True, description="Stop when the loss suddenly collapses to exactly zero.")
    divergence_factor: float = Field(3.0, gt=1, description="Diverged: smoothed loss above this x its minimum.")
    divergence_patience: int = Field(5, gt=0, description="Logged points the divergence must last before stopping.")
    spike_factor: float = Field(2.5, gt=1, description="Spike: a step's loss above this x the recent median.")
    grad_norm_factor: float = Field(10.0, gt=1, description="Grad-norm alert: above this x its recent median.")
    # 5: both corpus labellers judged 5-7 point logs (dev half, bench/diagnose_corpus.py); a verdict on
    # so few points comes with low confidence (health.diagnose.confidence)
    min_points: int = Field(5, gt=0, description="Fewer train steps than this are too few to judge.")
    smooth_window: int = Field(
        0, ge=0, description="Median smoothing window in points; 0 = auto (a tenth of the points, 3..25)."
    )
    unstable_share: float = Field(
        0.03, gt=0, lt=1, description="Unstable: spikes on more than this share of points (and 3 or more)."
    )
    oscillation_ratio: float = Field(
        0.3, gt=0, description="Oscillating: typical point-to-point jump above this share of the loss."
    )
    stall_min_improvement: float = Field(
        0.03, ge=0, lt=1, description="Stalled: smoothed loss never fell this share below its start."
    )
    stall_min_epochs: float = Field(
        2.0, ge=0, description="Stalled too: flat over the second half of a run of this many epochs or more..."
    )
    stall_high_share: float = Field(0.5, gt=0, lt=1, description="... while above this share of its start loss.")
    stall_plateau_gain: float = Field(
        0.06, ge=0, lt=1, description="Stalled too: flat over the second half after gaining less than this."
    )
    underfit_eval_min_drop: float = Field(
        0.05, gt=0, lt=1, description="Underfitting: the last eval beat the best before it by this share..."
    )
    underfit_eval_min_nats: float = Field(0.02, ge=0, description="... and by this many nats.")
    underfit_slow_gain: float = Field(
        0.10, gt=0, lt=1, description="Underfitting too: eval loss at its best at the end, gained under this share."
    )
    underfit_tail_share: float = Field(
        0.25, gt=0, lt=1, description="Underfitting: share of the run, at its end, that is checked."
    )
    underfit_min_drop: float = Field(
        0.06, gt=0, lt=1, description="Underfitting: the loss still fell this share in that end part."
    )
    overfit_min_rise: float = Field(
        0.01, gt=0, description="Overfitting: eval loss ends this share above its minimum (2+ evals)."
    )
    overfit_single_rise: float = Field(
        0.05, gt=0, description="Overfitting on one eval after the minimum: the rise must reach this share."
    )
    baseline_eval: bool = Field(
        True, description="Evaluate the untrained model at step 0: the baseline later evals are judged by."
    )
    untrained_margin: float = Field(
        0.01, ge=0, description="Failed: every eval after step 0 this share above the untrained model's."
    )
    baseline_stop_factor: float = Field(
        2.0, gt=1, description="Live stop: an eval loss this many times the untrained model's."
    )
    gap_ratio: float = Field(
        0.5, gt=0, description="Gap alert: eval loss this share above the train loss at that step."
    )
