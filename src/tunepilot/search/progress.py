"""Sweep progress for logs: after each trial ends, one line with trials done, elapsed time and an ETA.

    log = with_progress(log, study, spec.budget)

It wraps the sweep's `log` callback (the slot loop's messages), so it works the same in a terminal
and in a file or a scheduler's log. The ETA is the mean time per trial finished in this session
times the trials left under `budget.n_trials`, capped by what is left of `budget.seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from tunepilot.search.spec import Budget

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class SweepProgress:
    def __init__(self, study: optuna.Study, budget: Budget, clock: Callable[[], float] = time.monotonic):
        self.study, self.budget, self.clock = study, budget, clock
        self.start = clock()
        self.done_before = self.done = self._ended()
        self.earlier_s = float(study.user_attrs.get("elapsed_s", 0.0))  # sweep time of earlier sessions

    def _ended(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=ENDED))

    def line(self) -> str | None:
        """A progress line when a trial has ended since the last call, else None."""
        done = self._ended()
        if done == self.done:
            return None
        self.done = done
        elapsed = self.clock() - self.start
        this_session = done - self.done_before
        parts = [
            f"{done}/{self.budget.n_trials} trials" if self.budget.n_trials else f"{done} trials",
            f"{fmt_seconds(elapsed)} elapsed",
        ]
        eta = self.eta(elapsed, this_session, done)
        if eta is not None:
            parts.append(f"ETA {fmt_seconds(eta)}")
        return "progress: " + ", ".join(parts)

    def eta(self, elapsed: float, this_session: int, done: int) -> float | None:
        left = []
        if self.budget.n_trials and this_session > 0:
            left.append(elapsed / this_session * max(0, self.budget.n_trials - done))
        if self.budget.seconds:
            left.append(max(0.0, self.budget.seconds - self.earlier_s - elapsed))
        return min(left) if left else None


def with_progress(
    log: Callable[[str], None], study: optuna.Study, budget: Budget, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], None]:
    progress = SweepProgress(study, budget, clock)

    def logged(message: str) -> None:
        log(message)
        line = progress.line()
        if line is not None:
            log(line)

    return logged
