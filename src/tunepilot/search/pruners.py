"""Pruners of our own, on Optuna's `BasePruner.prune(study, trial) -> bool` contract.

EnvelopePruner ("the best curve so far"): a trial is stopped at fraction f of its schedule when its
objective there is worse than the best value any trial had at the same fraction f, by more than a
relative margin that shrinks as the schedule goes on:

    prune if  v(f) < best(f) * (1 - margin * (1 - f) ** power)     (maximize; mirrored for minimize)

Why not the median: the median pruner keeps every trial better than the middle one, so the
middling configurations (fine, never the best) run to the end and eat most of the budget. Curves
of one task keep their order at equal fractions (rank correlation 0.81 at 10% and 0.92 at 20% on
the DeBERTa/MultiNLI curves), so anything clearly under the best curve can stop early. The margin
(default 4% relative at the start, falling linearly to 0 at the end; chosen on the DeBERTa/MultiNLI
curves, where the eventual top configurations were within 3.6% of the best curve at 10% of their
schedules and within 1.4% at 50%, and where faster-shrinking margins pruned winners: see
bench/BENCHMARKS.md) is the slack a curve needs
to overtake a better one later; `warmup` is the share of the schedule before any judgement, `until` the share
after which a trial is always finished (what is left costs little against what it may be worth).
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState


class EnvelopePruner(BasePruner):
    def __init__(
        self,
        margin: float = 0.04,
        power: float = 1.0,
        warmup: float = 0.05,
        until: float = 1.0,
        n_startup_trials: int = 2,
    ):
        self.margin, self.power, self.warmup, self.until = margin, power, warmup, until
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup * 100 or step > self.until * 100:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
            and step in t.intermediate_values
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            and math.isfinite(t.intermediate_values[step])
        ]
        if len(others) < self.n_startup_trials:
            return False
        slack = self.margin * (1 - step / 100) ** self.power
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            best = max(others)
            return value < best - abs(best) * slack
        best = min(others)
        return value > best + abs(best) * slack
