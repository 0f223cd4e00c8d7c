"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates", sec. 3.3), on the standard engine.

    lr_k = start * (end / start) ** (k / (steps - 1))      one optimizer step per LR, k = 0..steps-1
    smoothed_k = EMA(loss, beta) / (1 - beta ** (k + 1))  bias-corrected, as Adam corrects its moments
    stop when smoothed_k > divergence_factor * min(smoothed)

The run is an ordinary `TrainingRun` (same model loading, data preparation, LoRA setup and training
step as `tunepilot train`) whose scheduler is replaced by the exponential ramp and whose health
monitor is off: divergence is the point of the test, and the ramp stops it itself.

Suggestion, stated in the output: the LR where the smoothed loss falls fastest per unit of log(LR)
(the steepest descent, a central difference over 4 steps), but at most `cap_fraction` x the LR of the
lowest smoothed loss. The cap keeps the suggestion clear of the cliff when the curve is flat or noisy
before it; a steepest point past the minimum can never be chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepilot.config import RunConfig, config_with
from tunepilot.engines.observers import Observer
from tunepilot.errors import UserError
from tunepilot.stream import Event, TrainStep

MAX_RAMP_STEPS = 10_000  # one LR per step: more than this is a typo, not a finer curve


@dataclass(frozen=True)
class LRFindSettings:
    start: float = 1e-7
    end: float = 1e-1
    steps: int = 100
    beta: float = 0.9  # EMA weight of the past; short ramps need a short memory
    divergence_factor: float = 4.0
    cap_fraction: float = 0.1
    skip_start: int | None = None  # first points to ignore (the EMA has seen too little); None: 10%, >= 2

    def check(self) -> None:
        problems = []
        if not 0 < self.start < self.end:
            problems.append(f"--start {self.start:g} must be > 0 and below --end {self.end:g}")
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            problems.append(f"--start {self.start:g} and --end {self.end:g} must be finite numbers")
        if self.steps < 8:
            problems.append(f"--steps {self.steps}: at least 8 steps are needed to see a curve")
        if self.steps > MAX_RAMP_STEPS:
            problems.append(f"--steps {self.steps}: at most {MAX_RAMP_STEPS}; a range test needs a few hundred")
        if not 0 <= self.beta < 1:
            problems.append(f"beta {self.beta}: must be in [0, 1)")
        if problems:
            raise UserError("lr-find: invalid range", problems=problems)

    @property
    def skip(self) -> int:
        return self.skip_start if self.skip_start is not None else max(2, self.steps // 10)

    def lr_at(self, k: int) -> float:
        return self.start * (self.end / self.start) ** (k / (self.steps - 1))


@dataclass
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None  # why the ramp ended early
    suggestion: float | None = None
    explanation: str = ""
    steepest_lr: float | None = None
    min_loss_lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ramp:
    """Follows the train-step records: smoothing, divergence check, stop request."""

    def __init__(self, settings: LRFindSettings):
        self.s = settings
        self.result = LRFindResult()
        self._avg = 0.0
        self.stop_reason: str | None = None

    def observe(self, loss: float, lr: float) -> None:
        r, k = self.result, len(self.result.losses)
        r.lrs.append(lr)
        r.losses.append(loss)
        if not math.isfinite(loss):
            r.smoothed.append(math.inf)
            self.stop_reason = f"loss is {loss} at LR {lr:.3g}"
            return
        self._avg = self.s.beta * self._avg + (1 - self.s.beta) * loss
        smoothed = self._avg / (1 - self.s.beta ** (k + 1))
        r.smoothed.append(smoothed)
        best = min(r.smoothed)
        if k >= self.s.skip and smoothed > self.s.divergence_factor * best:
            self.stop_reason = (
                f"smoothed loss {smoothed:.3g} > {self.s.divergence_factor:g} x best {best:.3g} at LR {lr:.3g}"
            )


def suggest(result: LRFindResult, settings: LRFindSettings) -> None:
    """Fill suggestion and explanation from the smoothed curve (rule in the module docstring)."""
    lrs, sm = result.lrs, result.smoothed
    usable = [i for i in range(settings.skip, len(sm)) if math.isfinite(sm[i])]
    if len(usable) < 3:
        result.explanation = "too few finite points to suggest an LR: lower --start or raise --steps"
        return
    i_min = min(usable, key=lambda i: sm[i])
    result.min_loss_lr = lrs[i_min]
    before = [i for i in usable if 0 < i <= i_min and i + 1 < len(sm) and math.isfinite(sm[i + 1])]
    if not before:
        result.explanation = (
            f"the lowest loss is at the first usable LR ({lrs[i_min]:.3g}): the range starts too high; lower --start"
        )
        return

    def slope(i: int) -> float:  # d smoothed / d ln(lr), central difference over +-2 points when there
        lo, hi = max(0, i - 2), min(len(sm) - 1, i + 2)
        while not math.isfinite(sm[hi]):
            hi -= 1
        return (sm[hi] - sm[lo]) / math.log(lrs[hi] / lrs[lo])

    i_steep = min(before, key=slope)
    result.steepest_lr = lrs[i_steep]
    cap = settings.cap_fraction * lrs[i_min]
    result.suggestion = min(result.steepest_lr, cap)
    which = "steepest descent" if result.steepest_lr <= cap else f"{settings.cap_fraction:g} x the min-loss LR (cap)"
    result.explanation = (
        f"steepest descent of the smoothed loss at LR {result.steepest_lr:.3g} (slope "
        f"{slope(i_steep):.3g} per e-fold of LR); lowest smoothed loss at LR {lrs[i_min]:.3g}; "
        f"suggestion = min(steepest, {settings.cap_fraction:g} x min-loss LR = {cap:.3g}) "
        f"= {result.suggestion:.3g} ({which})"
    )


def ramp_config(config: RunConfig, settings: LRFindSettings, run_dir: Path) -> RunConfig:
    """The user's config, turned into a ramp: constant schedule, no eval, no checkpoints, no monitor.
    Several datasets are ramped over as one stack (their weights kept): phases would ramp the LR over
    the first dataset alone, and their steps and LRs are not the ramp's."""
    return config_with(
        config,
        {
            "data.mix": "stacked",
            "data.phase_steps": None,
            "data.phase_learning_rates": None,
            "learning_rate": settings.start,
            "lr_scheduler_type": "constant",
            "warmup_ratio": 0.0,
            "warmup_steps": 0,
            "max_steps": settings.steps,
            "save_steps": settings.steps + 1,
            "data.eval": None,
            "val_size": 0.0,
            "health.enabled": False,
            "output_dir": str(run_dir),
            "overwrite_output_dir": True,
            "load_best_model_at_end": False,
        },
    )


class RampObserver(Observer):
    """Feeds the ramp each step's loss and LR; ends the run once the loss has diverged."""

    def __init__(self, ramp: Ramp):
        self.ramp = ramp

    def on_record(self, record, control) -> None:
        if not isinstance(record, TrainStep):
            return
        self.ramp.observe(record.loss, record.lr)
        if self.ramp.stop_reason:
            control.request_stop(Event(step=record.step, code="lr_find_diverged", message=self.ramp.stop_reason))


def find_lr(config: RunConfig, settings: LRFindSettings, run_dir: str | Path) -> LRFindResult:
    """Run the ramp with the standard engine's training step and return curve + suggestion."""
    import torch

    from tunepilot.engines.run import TrainingRun

    settings.check()
    ramp = Ramp(settings)
    ratio = settings.end / settings.start

    def exponential_ramp(optimizer, plan):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: ratio ** (min(k, settings.steps - 1) / (settings.steps - 1))
        )

    run = TrainingRun(
        ramp_config(config, settings, Path(run_dir)),
        run_dir,
        observers=[RampObserver(ramp)],
        scheduler_factory=exponential_ramp,
    )
    run.setup()
    try:
        for _ in run.steps():
            pass
    finally:
        run.close()
    ramp.result.stopped = ramp.stop_reason
    suggest(ramp.result, settings)
    return ramp.result


def plot(result: LRFindResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    finite = [(x, y) for x, y in zip(result.lrs, result.smoothed, strict=True) if math.isfinite(y)]
    ax.plot([x for x, _ in finite], [y for _, y in finite], color="C0", lw=2, label="smoothed (EMA)")
    for lr, colour, label in (
        (result.steepest_lr, "C2", "steepest"),
        (result.min_loss_lr, "C3", "min loss"),
        (result.suggestion, "C1", "suggested"),
    ):
        if lr is not None:
            ax.axvline(lr, color=colour, ls="--", lw=1.2, label=f"{label} {lr:.2g}")
    ax.set_xscale("log")
    if finite:
        low = min(y for _, y in finite)
        ax.set_ylim(low * 0.95, max(y for _, y in finite[:3] + [(0, low * 1.5)]) * 1.15)
    ax.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
