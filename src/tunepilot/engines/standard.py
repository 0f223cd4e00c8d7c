"""The standard engine: transformers + PEFT, one trial at a time (1 slot) behind the Engine interface.

Each trial is a `TrainingRun` evaluated at the report fractions of its own schedule; `advance` trains
it to the next one. The objective is eval loss, or a task metric (scored by generation through
`tunepilot.evaluate`) when one is named. Between LoRA trials the base model stays loaded: PEFT's
`unload()` takes the adapter layers out again, so the next trial starts from the same frozen weights without a reload.
"""

from __future__ import annotations

import time

import torch

from tunepilot.config import ModelSettings
from tunepilot.engines.base import Outcome, Progress, Report, TrialSpec
from tunepilot.engines.run import TrainingRun, exit_code_for, train
from tunepilot.models import load_model, resolve_device

__all__ = ["StandardEngine", "TrainingRun", "exit_code_for", "train"]


class StandardEngine:
    name = "standard"

    def __init__(self, objective: str = "eval_loss"):
        self.objective = objective  # "eval_loss" or a metric name (exact_match, accuracy, module:function...)
        self._base = None
        self._base_key: str | None = None
        self._trial: TrialSpec | None = None
        self._run: TrainingRun | None = None
        self._iter = None
        self._t0 = 0.0
        self._failed_at_start: Outcome | None = None  # a trial that could not start reports on advance

    @property
    def slots(self) -> int:
        return 1

    @property
    def active(self) -> list[int]:
        return [self._trial.number] if self._trial else []

    def start(self, spec: TrialSpec) -> None:
        if self._trial is not None:
            raise RuntimeError("the standard engine has one slot and it is taken")
        self._trial, self._t0 = spec, time.perf_counter()
        try:
            spec.config.output.overwrite_output_dir = True  # a trial's directory is the search's to reuse
            if self.objective != "eval_loss":
                spec.config.evaluate.metric, spec.config.evaluate.objective = self.objective, True
            base = self._shared_base(spec.config)
            self._run = TrainingRun(spec.config, spec.run_dir, resume=False, base_model=base,
                                    eval_fractions=spec.report_fractions)
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
            self._base = load_model(ModelSettings(**config.model.model_dump()), resolve_device(config.train.device))
            self._base_key = key
        return self._base

    def _finish(self, state: str, reason: str | None = None) -> Outcome:
        run, trial = self._run, self._trial
        summary = run.finish()
        if not summary["ok"]:
            state, reason = "failed", summary["stop_reason"]["code"]
        value = summary["objective"]["best"]
        outcome = Outcome(trial.number, state, value=value, reason=reason, steps=summary["steps"],
                          seconds=time.perf_counter() - self._t0, tokens=summary["tokens"], extra=summary)
        self._release()
        return outcome

    def _fail(self, error: Exception) -> Outcome:
        reason = "out_of_memory" if isinstance(error, torch.OutOfMemoryError) else f"{type(error).__name__}: {error}"
        steps = self._run.state.step if self._run is not None else 0
        tokens = self._run.state.tokens if self._run is not None else 0
        outcome = Outcome(self._trial.number, "failed", reason=reason, steps=steps,
                          seconds=time.perf_counter() - self._t0, tokens=tokens)
        self._release()
        return outcome

    def _release(self) -> None:
        run = self._run
        if run is not None and getattr(run, "model", None) is not None and hasattr(run.model, "unload"):
            run.model.unload()  # remove this trial's LoRA layers; the shared base stays as it was
        if run is not None and getattr(run, "writer", None) is not None:
            run.writer.close()
        self._trial = self._run = self._iter = None
