"""The run recorder: one lifecycle for every run, whichever engine trains it.

    recorder = RunRecorder(config, run_dir, engine="packed", planned_steps=..., observers=[...])
    prepare_run_dir(run_dir, config)     # refuse to mix with a previous run; clear it if overwriting
    recorder.start()                     # config.yaml, metrics.jsonl, observers' on_start
    recorder.record(TrainStep(...))      # stream + observers (health monitor, trackers, progress)
    recorder.track_eval(point, value)    # best checkpoint and early-stopping patience
    summary = recorder.finish(...)       # summary.json (RunSummary), observers' on_end

The standard engine records one run with it, the packed engine one per trial, so a packed trial's
directory is a standard run's: `config.yaml`, `metrics.jsonl`, `summary.json`, `adapter/`, `best/`.
The live health monitor is an observer like any other; so are lr-find's divergence check, the
CLI's progress, and the experiment trackers named by `report_to`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunepilot.engines.checkpoint import LoopState
from tunepilot.engines.observers import Observer, RunInfo
from tunepilot.engines.summary import FailureKind, Objective, RunSummary, StopReason
from tunepilot.health.rules.baseline import worse_than_untrained
from tunepilot.io import atomic_write_json, atomic_write_text
from tunepilot.stream import EvalPoint, Event, MetricsWriter, Record, stop_record

RUN_FILES = ("metrics.jsonl", "summary.json", "config.yaml", "checkpoint", "best", "adapter", "model")


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a run's evaluations are judged by: eval loss, or a task metric scored by generation."""

    name: str = "eval_loss"
    direction: Literal["minimize", "maximize"] = "minimize"


class HealthObserver(Observer):
    """The live health monitor (`health.*`): alerts go into the stream, a stop rule ends the run."""

    def __init__(self, monitor):
        self.monitor = monitor

    def on_record(self, record: Record, control) -> None:
        if isinstance(record, Event):
            return
        for event in self.monitor.observe(record):
            control.emit(event)
        if self.monitor.stop_event is not None:
            control.request_stop(self.monitor.stop_event)


class RunRecorder:
    def __init__(
        self,
        config: Any,
        run_dir: str | Path | None,
        *,
        engine: str,
        planned_steps: int,
        objective: ObjectiveSpec = ObjectiveSpec(),
        observers: list[Observer] | tuple[Observer, ...] = (),
        num_params: int | None = None,
        trial: int | None = None,
        params: dict[str, Any] | None = None,
        watch: bool = True,
    ):
        """`watch`: run the live health monitor (`health.*`); off on the ranks other than 0."""
        self.config, self.engine, self.objective = config, engine, objective
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.planned_steps, self.trial, self.params = planned_steps, trial, dict(params or {})
        self.state = LoopState()  # steps, tokens, seconds, best and patience: what a checkpoint keeps
        self.evals: list[tuple[int, float]] = []
        self.stop_event: Event | None = None
        self.writer: MetricsWriter | None = None
        # the caller's observers, the experiment trackers of `report_to`, then the health monitor
        trackers = _trackers(config) if watch else []
        self.observers = [*observers, *trackers, *(_health(config, num_params, planned_steps) if watch else [])]

    def start(self, resumed_from: int = 0) -> None:
        """Open the stream (records past `resumed_from` are dropped: a resumed run redoes them),
        write the resolved config, and tell the observers."""
        if self.run_dir is not None:
            from tunepilot.config import dump_config

            self.writer = MetricsWriter(self.run_dir / "metrics.jsonl")
            self.writer.truncate_after(resumed_from)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.config))
        info = RunInfo(
            self.engine, self.run_dir, self.config, self.planned_steps, self.trial, self.params, resumed_from
        )
        for observer in self.observers:
            observer.on_start(info)
        if not resumed_from:  # what a reader of the stream alone needs to place each step in the run
            self.record(
                Event(
                    step=0,
                    code="run_start",
                    message=f"{self.engine} run of {self.planned_steps} planned steps",
                    data={"planned_steps": self.planned_steps, "engine": self.engine, "objective": self.objective.name},
                )
            )
        if resumed_from:
            self.record(Event(step=resumed_from, code="resumed", message=f"resumed from step {resumed_from}"))

    # -- the stream -------------------------------------------------------------------------------
    def record(self, record: Record) -> None:
        """Write a record and show it to every observer (which may emit events or stop the run)."""
        if self.writer is not None:
            self.writer.write(record)
        for observer in self.observers:
            observer.on_record(record, self)

    def emit(self, event: Event) -> None:
        self.record(event)

    def request_stop(self, event: Event) -> None:
        """End the run after the current step; the first reason wins and goes to the stream."""
        if self.stop_event is None:
            self.stop_event = event
            self.record(stop_record(event))

    @property
    def stopped(self) -> bool:
        return self.stop_event is not None

    # -- evaluations ------------------------------------------------------------------------------
    def record_baseline(self, point: EvalPoint) -> None:
        """The untrained model's eval (step 0): written to the stream, kept to judge the run by."""
        self.state.extra["baseline_eval_loss"] = point.eval_loss
        self.record(point)

    @property
    def harmed(self) -> bool:
        """Every eval after step 0 worse than the untrained model (health.untrained_margin)."""
        baseline = self.state.extra.get("baseline_eval_loss")
        best = self.state.best_eval_loss
        return worse_than_untrained(baseline, [] if best is None else [best], self.config.health.untrained_margin)

    def track_eval(self, point: EvalPoint, value: float) -> bool:
        """Take an evaluation's objective value; True when it is a new best (the caller saves best/).

        A new best must gain more than `early_stopping_threshold`; `early_stopping_patience`
        evaluations in a row without one stop the run (HF's EarlyStoppingCallback semantics)."""
        s, t = self.state, self.config.train
        self.evals.append((point.step, value))
        if point.eval_loss is not None and math.isfinite(point.eval_loss):
            s.best_eval_loss = min(point.eval_loss, s.best_eval_loss or math.inf)
        if not math.isfinite(value):
            return False
        maximize = self.objective.direction == "maximize"
        gain = math.inf if s.best_eval is None else (value - s.best_eval if maximize else s.best_eval - value)
        if gain > t.early_stopping_threshold:
            s.best_eval, s.best_step, s.evals_without_gain = value, point.step, 0
            return True
        s.evals_without_gain += 1
        if t.early_stopping_patience and s.evals_without_gain >= t.early_stopping_patience:
            message = (
                f"{self.objective.name} has not improved by more than {t.early_stopping_threshold} "
                f"for {s.evals_without_gain} evaluations (best {s.best_eval:.4f} at step {s.best_step})"
            )
            self.request_stop(Event(step=point.step, code="early_stopping", severity="info", message=message))
        return False

    # -- the end ----------------------------------------------------------------------------------
    def finish(
        self,
        *,
        status: str | None = None,
        failure: FailureKind | None = None,
        reason: str | None = None,
        adapter: Path | None = None,
        restored_best: bool = False,
        **facts: Any,
    ) -> RunSummary:
        """Write summary.json and tell the observers. `status` None: completed, or what the stop
        event says (early_stopped, or stopped by the monitor). `facts`: device, peak_memory_mb,
        parameters, plan, data."""
        status, failure, stop = self._status(status, failure, reason)
        s = self.state
        summary = RunSummary(
            engine=self.engine,
            status=status,
            ok=status not in ("stopped", "failed", "interrupted"),
            failure=failure,
            stop_reason=stop,
            trial=self.trial,
            params=self.params,
            steps=s.step,
            planned_steps=self.planned_steps,
            tokens=s.tokens,
            seconds=round(s.seconds, 3),
            train_seconds=round(s.train_seconds, 3),
            tokens_per_second=round(s.tokens / max(s.train_seconds, 1e-9), 1),
            objective=Objective(
                name=self.objective.name, direction=self.objective.direction, best=s.best_eval, step=s.best_step
            ),
            best_eval_loss=s.best_eval_loss,
            best_step=s.best_step,
            restored_best=restored_best,
            run_dir=str(self.run_dir) if self.run_dir is not None else None,
            adapter=str(adapter) if adapter is not None else None,
            evals=self.evals,
            **{"device": "cpu", **facts},
        )
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "summary.json", summary.to_json())
        self.close()
        for observer in self.observers:
            observer.on_end(summary)
        return summary

    def _status(self, status, failure, reason) -> tuple[str, FailureKind | None, StopReason | None]:
        stop = self.stop_event
        if stop is not None and status != "pruned":  # the observer's reason, as it wrote it
            reason = StopReason(code=stop.code, message=stop.message, step=stop.step)
        elif status is not None:
            code = failure.value if failure else status
            return status, failure, StopReason(code=code, message=reason or status, step=self.state.step)
        if status is not None:
            return status, failure, reason
        if (stop is None or stop.code == "early_stopping") and self.harmed:
            baseline, best = self.state.extra["baseline_eval_loss"], self.state.best_eval_loss
            message = (
                f"training made the model worse: its best eval loss {best:.4g} is above the untrained "
                f"model's {baseline:.4g} (step 0); nothing worth keeping was trained"
            )
            return (
                "failed",
                FailureKind.HEALTH_STOP,
                StopReason(code="worse_than_untrained", message=message, step=self.state.step),
            )
        if stop is None:
            return "completed", None, None
        if stop.code == "early_stopping":
            return "early_stopped", None, reason
        return "stopped", failure or FailureKind.HEALTH_STOP, reason

    def close(self) -> None:
        """Close the stream without a summary (a run used as a probe, an abandoned trial)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def prepare_run_dir(run_dir: Path, config: Any, resume: bool = False, overwrite: bool | None = None) -> None:
    """A directory holding another run is never mixed with a new one: continue it (`resume`), start
    afresh (`overwrite`, default: the config's overwrite_output_dir), or refuse."""
    from tunepilot.errors import UserError

    overwrite = config.output.overwrite_output_dir if overwrite is None else overwrite
    has_run = (run_dir / "metrics.jsonl").exists()
    if has_run and not resume and not overwrite:
        raise UserError(
            f"{run_dir}: holds a previous run; add --resume to continue it, or set "
            "overwrite_output_dir: true (or another output_dir) to start afresh"
        )
    if has_run and not resume:
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _trackers(config: Any) -> list[Observer]:
    if not config.tracking.report_to:
        return []
    from tunepilot.tracking import observers_for

    return observers_for(config)


def _health(config: Any, num_params: int | None, planned_steps: int) -> list[Observer]:
    if not config.health.enabled:
        return []
    from tunepilot.health.monitor import LiveMonitor

    monitor = LiveMonitor(
        config.health,
        method=config.method.finetuning_type,
        num_params=num_params,
        planned_steps=planned_steps,
        learning_rate=config.train.learning_rate,
    )
    return [HealthObserver(monitor)]
