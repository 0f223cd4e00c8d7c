"""The sweep's budget: finished trials, wall-clock seconds, GPU-hours, training steps; and trial costs.

Spending is summed over the study's trials (their `seconds`, `gpu_hours`, `steps` user attrs), so a
resumed sweep continues from what the killed one spent; wall-clock time of earlier runs is kept in
the study's `elapsed_s` user attr.

Workers sharing a study (tunepilot.search.workers) read all of this from the storage, so a budget
holds across them: the trials RUNNING in any worker count toward n_trials, and the check and the
ask that follows it run as one turn across workers (`turn()`), so n_trials is never passed; the
other budgets may be passed only by the trials already running when they were reached.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from tunepilot.search.spec import Budget
from tunepilot.search.workers import is_worker_study, turn


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """Does a finished trial count against n_trials? Interrupted ones are retried and rejected
    duplicates were never trained, so they do not."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if "duplicate_of" in t.user_attrs or t.user_attrs.get("failure") == "interrupted":
        return False
    return t.state == TrialState.FAIL and not str(t.user_attrs.get("reason", "")).startswith("interrupted")


@dataclass
class Spend:
    trials: int = 0
    seconds: float = 0.0
    gpu_hours: float = 0.0
    steps: int = 0
    cost: float | None = None
    running: int = 0  # trials RUNNING in the storage (every worker's)


@dataclass
class BudgetTracker:
    budget: Budget
    study: optuna.Study
    started: float = field(default_factory=time.monotonic)
    earlier_s: float = 0.0

    def __post_init__(self) -> None:
        self.earlier_s = float(self.study.user_attrs.get("elapsed_s", 0.0))

    @property
    def shared(self) -> bool:
        return is_worker_study(self.study)

    def turn(self) -> contextlib.AbstractContextManager:
        """Check the budget and ask one trial as one step across the workers of a shared study."""
        return turn(self.study)

    def others_running(self) -> bool:
        """Nothing to start here, but other workers' trials run: wait (True), since one of them may die
        and its retry start here, or end and free the budget. False: leave."""
        return self.shared and self.study.others_running()

    def spent(self) -> Spend:
        s = Spend(seconds=self.earlier_s + time.monotonic() - self.started)
        for t in self.study.get_trials(deepcopy=False):
            s.running += t.state == TrialState.RUNNING
            s.trials += counts(t)
            s.gpu_hours += float(t.user_attrs.get("gpu_hours", 0.0))
            s.steps += int(t.user_attrs.get("steps", 0))
        if self.budget.price_per_gpu_hour is not None:
            s.cost = s.gpu_hours * self.budget.price_per_gpu_hour
        return s

    def exhausted(self, running: int = 0) -> str | None:
        """Why no new trial may start (None: one may); `running` trials count toward n_trials (in a shared
        study: every worker's RUNNING trials, from the storage)."""
        s, b = self.spent(), self.budget
        if self.shared:
            running = s.running
        if b.n_trials is not None and s.trials + running >= b.n_trials:
            return f"n_trials reached ({s.trials} finished, {running} running, budget {b.n_trials})"
        return self.hard_limit(s)

    def hard_limit(self, s: Spend | None = None) -> str | None:
        """A budget that also stops running trials: wall clock, GPU-hours, training steps."""
        s, b = s or self.spent(), self.budget
        if b.seconds is not None and s.seconds >= b.seconds:
            return f"wall-clock budget spent ({s.seconds:.0f} s of {b.seconds:.0f} s)"
        if b.gpu_hours is not None and s.gpu_hours >= b.gpu_hours:
            return f"GPU-hour budget spent ({s.gpu_hours:.3f} of {b.gpu_hours})"
        if b.train_steps is not None and s.steps >= b.train_steps:
            return f"training-step budget spent ({s.steps} of {b.train_steps})"
        return None

    def save_elapsed(self) -> None:
        mine = self.earlier_s + time.monotonic() - self.started
        if self.shared:  # workers run side by side: the study's wall clock is the longest of theirs
            mine = max(mine, float(self.study.user_attrs.get("elapsed_s", 0.0)))
        self.study.set_user_attr("elapsed_s", mine)


def trial_costs(
    seconds: float, steps: int, tokens: int, gpus: float, price: float | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Per-trial records: an engine may give gpu_seconds itself (a packed slot's share of the GPU)."""
    gpu_hours = float(extra.get("gpu_seconds", seconds * gpus)) / 3600.0
    out = {"seconds": round(seconds, 3), "steps": int(steps), "tokens": int(tokens), "gpu_hours": gpu_hours}
    if price is not None:
        out["cost"] = gpu_hours * price
    return out
