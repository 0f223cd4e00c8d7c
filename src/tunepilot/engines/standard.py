"""The standard engine: transformers + PEFT, one trial at a time (1 slot) behind the Engine interface.

Each trial is a `TrainingRun` evaluated at the report fractions of its own schedule; `advance` trains
it to the next one. The objective is eval loss, or a task metric (scored by generation through
`tunepilot.evaluate`) when one is named. Between LoRA trials the base model stays loaded: PEFT's
`unload()` takes the adapter layers out again, so the next trial starts from the same frozen weights
without a reload.
"""

from __future__ import annotations

import time

import torch

from tunepilot.config import ModelSettings
from tunepilot.engines.base import Outcome, Progress, Report, TrialSpec, resolved_config_key
from tunepilot.engines.run import TrainingRun, exit_code_for, train
from tunepilot.engines.summary import FailureKind, RunSummary
from tunepilot.errors import UserError
from tunepilot.models import load_model, resolve_device

__all__ = ["StandardEngine", "TrainingRun", "exit_code_for", "supports_task_metric", "train"]


def supports_task_metric(metric: str) -> bool:
    """eval_loss, a registered task metric (or its alias), or a custom `module:function`."""
    from tunepilot.evaluate.metrics import canonical_name, metric_names

    return metric == "eval_loss" or ":" in metric or canonical_name(metric) in metric_names()


class OneTrialEngine:
    """What an engine of one slot that scores eval loss or a task metric shares (standard, launched)."""

    name = "one-trial"
    default_metric = "eval_loss"
    _trial: TrialSpec | None = None

    @property
    def slots(self) -> int:
        return 1

    @property
    def active(self) -> list[int]:
        return [self._trial.number] if self._trial else []

    def supports(self, metric: str) -> bool:
        return supports_task_metric(metric)

    def config_key(self, spec: TrialSpec) -> str | None:
        return resolved_config_key(spec)

    def _take_slot(self, spec: TrialSpec) -> None:
        if self._trial is not None:
            raise RuntimeError(f"the {self.name} engine has one slot and it is taken")
        self._trial = spec


class StandardEngine(OneTrialEngine):
    name = "standard"

    def __init__(self, objective: str = "eval_loss"):
        if not supports_task_metric(objective):
            raise UserError(
                f"objective.metric: {objective!r} is neither eval_loss nor a task metric the standard "
                "engine can score (exact_match, numeric_match, accuracy, token_f1, field_f1, "
                "or module:function)"
            )
        self.objective = objective  # "eval_loss" or a metric name (exact_match, accuracy, module:function...)
        self.seconds = {"load": 0.0, "train": 0.0}
        self._base = None
        self._base_key: str | None = None
        self._trial: TrialSpec | None = None
        self._run: TrainingRun | None = None
        self._iter = None
        self._t0 = 0.0
        self._failed_at_start: Outcome | None = None  # a trial that could not start reports on advance

    def start(self, spec: TrialSpec) -> None:
        self._take_slot(spec)
        self._t0 = time.perf_counter()
        try:
            spec.config.output.overwrite_output_dir = True  # a trial's directory is the search's to reuse
            if self.objective != "eval_loss":
                spec.config.evaluate.metric, spec.config.evaluate.objective = self.objective, True
            base = self._shared_base(spec.config)
            self._t0 = time.perf_counter()  # the shared base's load is the engine's, not this trial's
            self._run = TrainingRun(
                spec.config,
                spec.run_dir,
                resume=False,
                base_model=base,
                eval_fractions=spec.report_fractions,
                trial=spec.number,
                params=spec.params,
            )
            self._run.setup()
            self._iter = self._run.steps()
        except Exception as e:  # noqa: BLE001 - a trial's failure is an outcome, not a crash of the sweep
            self._failed_at_start = self._fail(e)

    def advance(self) -> list[Progress]:
        if self._trial is None:
            return []
        if self._failed_at_start is not None:
            outcome, self._failed_at_start = self._failed_at_start, None
            return [outcome]
        try:
            point = next(self._iter)
        except StopIteration:
            return [self._finish("complete")]
        except Exception as e:  # noqa: BLE001
            return [self._fail(e)]
        value = self._run.objective_value(point)
        fraction = point.step / self._run.plan.total_steps
        return [Report(self._trial.number, fraction=round(fraction, 6), step=point.step, value=value)]

    def stop(self, number: int, reason: str) -> Outcome:
        return self._finish("pruned", reason)

    def close(self) -> None:
        self._base = None

    # ----------------------------------------------------------------------------------------------
    def _shared_base(self, config):
        if config.method.finetuning_type == "full" or config.model.quantization_bit:
            return None  # full fine-tuning changes the base weights: load a fresh copy per trial
        key = config.model.model_dump_json()
        if self._base_key != key:
            started = time.perf_counter()
            self._base = load_model(ModelSettings(**config.model.model_dump()), resolve_device(config.train.device))
            self._base_key = key
            self.seconds["load"] += time.perf_counter() - started
        return self._base

    def _finish(self, state: str, reason: str | None = None) -> Outcome:
        summary: RunSummary = self._run.finish(status="pruned" if state == "pruned" else None, reason=reason)
        failure = None
        if not summary.ok:
            state, failure, reason = "failed", summary.failure or FailureKind.ERROR, summary.stop_reason.code
        outcome = Outcome(
            self._trial.number,
            state,
            value=summary.objective.best,
            reason=reason,
            failure=failure,
            steps=summary.steps,
            seconds=self._spent(),
            tokens=summary.tokens,
            extra={"engine": self.name},
        )
        self._release()
        return outcome

    def _fail(self, error: Exception) -> Outcome:
        oom = isinstance(error, torch.OutOfMemoryError)
        reason = (
            "out of memory"
            if oom
            else (error.message if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
        )
        run = self._run if self._run is not None and self._run.recorder is not None else None
        outcome = Outcome(
            self._trial.number,
            "failed",
            reason=reason,
            failure=FailureKind.OOM if oom else FailureKind.ERROR,
            steps=run.state.step if run else 0,
            seconds=self._spent(),
            tokens=run.state.tokens if run else 0,
        )
        self._release()
        return outcome

    def _spent(self) -> float:
        seconds = time.perf_counter() - self._t0
        self.seconds["train"] += seconds
        return seconds

    def _release(self) -> None:
        run = self._run
        if run is not None and getattr(run, "model", None) is not None and hasattr(run.model, "unload"):
            run.model.unload()  # remove this trial's LoRA layers; the shared base stays as it was
        if run is not None:
            run.close()
        self._trial = self._run = self._iter = None
