"""The slot loop: fill free engine slots by asking, route reports to the pruner, tell outcomes.

    while budget and protocol allow: ask -> engine.start          (every free slot)
    engine.advance() -> Reports:  report to Optuna on the percent grid, ask the pruner, stop pruned
                     -> Outcomes: tell complete / pruned / failed (reason, seconds, steps, GPU-hours)

Trials are compared at equal fractions of their own schedules: a Report at fraction f is reported
to Optuna at every grid percent (every `report_every` of the schedule) passed since the last one,
the value linearly interpolated between the two reports around it (a report past the end of the
curve is carried flat). A non-finite objective fails the trial; an engine exception fails the
trials in its slots; the sweep goes on. An out-of-memory failure is retried once with half the
micro-batch and twice the accumulation (the same effective batch), through `enqueue_trial`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tunepilot.engines.base import Outcome, Report, TrialSpec
from tunepilot.engines.summary import FailureKind
from tunepilot.errors import UserError
from tunepilot.search.budget import BudgetTracker, trial_costs
from tunepilot.search.dedupe import Seen, config_key
from tunepilot.search.protocols import Ask, Protocol
from tunepilot.search.results import COST_KEYS
from tunepilot.search.study import enqueue_retry

ERROR = FailureKind.ERROR
WAIT_S = 0.2  # a worker with nothing to start polls the shared study this often while others' trials run


@dataclass
class _Live:
    trial: optuna.Trial
    stop_at: float
    last: tuple[float, float] | None = None  # (fraction, value) of the previous report
    steps: int = 0


class SlotLoop:
    def __init__(
        self,
        study: optuna.Study,
        engine: Any,
        protocol: Protocol,
        budget: BudgetTracker,
        make_spec: Callable[[optuna.Trial], TrialSpec],
        every: float = 0.05,
        oom_overrides: Callable[[optuna.Trial], dict[str, Any] | None] | None = None,
        gpus: float = 0.0,
        price: float | None = None,
        log: Callable[[str], None] | None = None,
        max_consecutive_failures: int = 5,
        skip_duplicates: bool = True,
    ):
        self.study, self.engine, self.protocol, self.budget = study, engine, protocol, budget
        self.seen = Seen(study) if skip_duplicates else None
        self.make_spec, self.oom_overrides = make_spec, oom_overrides or (lambda t: None)
        self.every_pct = max(1, round(every * 100))
        self.gpus, self.price = gpus, price
        self.log = log or (lambda msg: None)
        self.max_failures, self.failures_in_row = max_consecutive_failures, 0
        self.live: dict[int, _Live] = {}

    def run(self) -> str:
        """Run until the budget, the protocol or the failure limit ends the sweep; returns why."""
        try:
            while True:
                why = self._fill()
                if not self.live:
                    if self.budget.others_running():  # shared study: a dead worker's trial may be retried here
                        time.sleep(WAIT_S)
                        continue
                    why = self._fill() or why  # the others just ended: the budget as it stands now
                    if not self.live:
                        return why or "nothing left to run"
                    continue
                hard = self.budget.hard_limit()
                if hard:
                    self._stop_all(hard)
                    return hard
                self._advance()
        except KeyboardInterrupt:
            self._fail_all("interrupted (Ctrl-C); re-run the same command to resume", retry=True)
            raise
        finally:
            self.budget.save_elapsed()

    def _fill(self) -> str | None:
        while len(self.live) < self.engine.slots:
            if self.failures_in_row >= self.max_failures:
                return f"stopped: {self.failures_in_row} trials failed in a row (see their reasons)"
            with self.budget.turn():  # workers sharing the study check the budget and ask one at a time
                why = self.budget.exhausted(running=len(self.live))
                if why or self.protocol.done:
                    return why or "protocol finished"
                if self.seen is not None and self.seen.converged:
                    return f"converged: the last {self.seen.in_row} proposals were configurations already run"
                ask = self.protocol.ask()
            if ask is None:
                return "waiting for running trials"
            self._start(ask)
        return None

    def _start(self, ask: Ask) -> None:
        trial, number = ask.trial, ask.trial.number
        if ask.stage:
            trial.set_user_attr("stage", ask.stage)
        try:
            if ask.error:
                raise UserError(ask.error)
            spec = self.make_spec(trial)
            if self.seen is not None:
                key = config_key(self.engine, spec, ask.stop_at)
                twin = self.seen.claim(trial, key)
                if twin is not None:
                    self.seen.settle(trial, twin, ask.on_duplicate)
                    self.log(f"trial {number}: same configuration as trial {twin.number} ({ask.on_duplicate})")
                    return
                if key is not None:
                    trial.set_user_attr("config_key", key)
            if spec.run_dir is not None:
                trial.set_user_attr("run_dir", str(spec.run_dir))
            self.engine.start(spec)
        except Exception as e:  # a bad config (UserError), a NaN param, a start that crashed
            reason = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            self._tell(trial, "failed", None, reason, Outcome(number, "failed", reason=reason, failure=ERROR))
            return
        self.live[number] = _Live(trial, ask.stop_at)
        self.log(f"trial {number} started: {_fmt(trial.params)}")

    def _advance(self) -> None:
        try:
            progress = self.engine.advance()
        except Exception as e:
            self._fail_all(f"engine error: {type(e).__name__}: {e}", detail=traceback.format_exc(limit=3))
            return
        for p in progress:
            if p.number not in self.live:
                continue  # stopped earlier in this batch
            if isinstance(p, Report):
                self._on_report(p)
            else:
                self._on_outcome(p)

    def _on_report(self, r: Report) -> None:
        live = self.live[r.number]
        live.steps = max(live.steps, r.step)
        if r.value is None or not math.isfinite(r.value):
            reason = f"objective is {r.value} at {r.fraction:.0%} of the schedule (diverged)"
            self._end(r.number, "failed", reason, FailureKind.NON_FINITE)
            return
        for pct, value in self._grid(live, r.fraction, r.value):
            live.trial.report(value, pct)
        live.last = (r.fraction, r.value)
        if r.fraction >= 1.0:
            return  # its Outcome follows; nothing left to prune
        if r.fraction >= live.stop_at - 1e-9:
            self._end(r.number, "pruned", f"stopped by the protocol at {live.stop_at:.0%} of the schedule")
        elif self.protocol.should_prune(live.trial, r.fraction):
            self._end(r.number, "pruned", f"pruned at {r.fraction:.0%} of the schedule")

    def _grid(self, live: _Live, fraction: float, value: float) -> list[tuple[int, float]]:
        f0, v0 = live.last or (0.0, value)
        start = (math.floor(f0 * 100 + 1e-9) // self.every_pct + 1) * self.every_pct
        out = []
        for pct in range(start, min(100, math.floor(fraction * 100 + 1e-9)) + 1, self.every_pct):
            w = 1.0 if fraction <= f0 else (pct / 100 - f0) / (fraction - f0)
            out.append((pct, v0 + min(max(w, 0.0), 1.0) * (value - v0)))
        return out

    def _end(self, number: int, state: str, reason: str, failure: FailureKind | None = None) -> None:
        """End a live trial early: the engine stops it, and it is told with the given state."""
        try:
            outcome = self.engine.stop(number, reason)
        except Exception as e:
            outcome = Outcome(number, "failed", reason=f"{reason}; stop failed: {e}", failure=ERROR)
        live = self.live.pop(number)
        value = live.last[1] if live.last else None
        failure = failure or outcome.failure or (ERROR if state == "failed" else None)
        self._tell(live.trial, state, value, reason, outcome, failure)

    def _on_outcome(self, o: Outcome) -> None:
        live = self.live.pop(o.number)
        if o.state == "complete" and (o.value is None or not math.isfinite(o.value)):
            self._tell(live.trial, "failed", None, f"final objective is {o.value}", o, FailureKind.NON_FINITE)
            return
        self._tell(live.trial, o.state, o.value, o.reason, o, o.failure)
        if o.failure == FailureKind.OOM:
            self._retry_oom(live.trial)

    def _retry_oom(self, trial: optuna.Trial) -> None:
        if trial.user_attrs.get("retry_of") is not None:
            return
        overrides = self.oom_overrides(trial)
        if overrides:
            enqueue_retry(self.study, trial.params, trial.user_attrs, trial.number, overrides=overrides)
            self.log(f"trial {trial.number}: out of memory; retrying with {_fmt(overrides)}")

    def _tell(
        self,
        trial: optuna.Trial,
        state: str,
        value: float | None,
        reason: str | None,
        o: Outcome,
        failure: FailureKind | None = None,
    ) -> None:
        steps = max(o.steps, self.live[trial.number].steps if trial.number in self.live else 0)
        # o.seconds is the trial's share of the engine's time, so it holds the engine's GPUs all along
        costs = trial_costs(o.seconds, steps, o.tokens, self.gpus, self.price, o.extra)
        kind = failure.value if failure is not None else None
        for key, v in {**costs, "reason": reason, "failure": kind, **_plain(o.extra)}.items():
            if v is not None:
                trial.set_user_attr(key, v)
        if state == "complete":
            self.study.tell(trial, value)
        elif state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        self.failures_in_row = self.failures_in_row + 1 if state == "failed" else 0
        if self.seen is not None:
            self.seen.add(trial, state)
            self.seen.in_row = 0
        value_text = "" if value is None else f" value={value:.6g}"
        self.log(f"trial {trial.number} {state}{value_text}{f' ({reason})' if reason else ''}")

    def _fail_all(self, reason: str, detail: str = "", retry: bool = False) -> None:
        for number in list(self.live):
            live = self.live.pop(number)
            with contextlib.suppress(Exception):  # a broken engine may fail to stop; the trial fails anyway
                self.engine.stop(number, reason)
            if detail:
                live.trial.set_user_attr("traceback", detail[-2000:])
            reason_attr = "interrupted (Ctrl-C)"
            if retry and live.trial.user_attrs.get("retry_of") is None:
                enqueue_retry(self.study, live.trial.params, live.trial.user_attrs, number)
            kind = FailureKind.INTERRUPTED if retry else ERROR
            self._tell(
                live.trial,
                "failed",
                None,
                reason_attr if retry else reason,
                Outcome(number, "failed", steps=live.steps, failure=kind),
                kind,
            )

    def _stop_all(self, reason: str) -> None:
        for number in list(self.live):
            self._end(number, "pruned", reason)


def _plain(extra: dict[str, Any]) -> dict[str, Any]:
    """Small JSON-safe engine extras (user attrs are stored as JSON); big or odd values are left out."""
    out = {}
    for k, v in extra.items():
        try:
            text = json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        if k not in COST_KEYS and len(text) <= 2000:
            out[k] = v
    return out


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
