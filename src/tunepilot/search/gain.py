"""GainPruner ("can it still win?"): stop a trial whose optimistic final cannot beat the incumbent.

At fraction f of its schedule a trial has value v(f). How much can it still gain? The study knows:
every trial that ran to the end showed how much it gained from f to its end. The optimistic final is

    v(f) + G(f) + z * noise,  G(f) = the largest gain from f to the end of any complete trial
                              (times `slack`), noise = the eval noise of a difference of two values

and the trial stops when that cannot beat the best complete trial's final value (maximize; mirrored
for minimize). Nothing here is fixed to one task: G is measured on the study's own curves (a learning
curve extrapolated by the curves seen so far, not by an assumed shape), and the noise is the spread of
the study's plateau values (each complete trial's values over the last `plateau` share of its
schedule, around a straight line fit; pooled). With under `n_min_complete` complete trials there is
no G yet and the `fallback` pruner (default: the envelope, search/pruners.py) decides alone; after
that a trial stops when either says so. The fallback keeps early, clearly bad curves cheap; the gain
rule stops the late middling ones that the envelope's relative margin (about 2% at half the
schedule, far above the 0.1-0.3% that separates the top configurations) lets run to the end.

Why a max and not a typical gain: a trial that starts slowly and finishes first is exactly what a
pruner must not stop, and a max keeps every such curve seen so far. Complete trials are the ones
pruning let through, so G can under-read; the first trials (the fallback's) are judged only by the
fallback, and `slack` (default 1.25) widens G for what has not been seen.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunepilot.search.pruners import EnvelopePruner


class GainPruner(BasePruner):
    def __init__(
        self,
        slack: float = 1.25,
        z: float = 1.0,
        n_min_complete: int = 3,
        plateau: float = 0.5,
        warmup: float = 0.05,
        collapse: float | None = 0.25,
        from_top: float = 1.0,
        fallback: BasePruner | None = None,
    ):
        self.slack, self.z, self.n_min_complete, self.plateau, self.warmup = slack, z, n_min_complete, plateau, warmup
        self.collapse, self.from_top = collapse, from_top
        self.fallback = fallback if fallback is not None else EnvelopePruner()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.fallback.prune(study, trial):
            return True
        step = trial.last_step
        if step is None or step < self.warmup * 100 or step >= 100:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        if self.collapse is not None and _collapsed(trial, sign, self.collapse):
            return True
        complete = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value) and step in t.intermediate_values
        ]
        if len(complete) < self.n_min_complete:
            return False
        complete.sort(key=lambda t: -sign * t.value)
        incumbent = sign * complete[0].value
        top = complete[: max(self.n_min_complete, math.ceil(self.from_top * len(complete)))]
        gain = max(sign * (t.value - t.intermediate_values[step]) for t in top)
        optimistic = sign * value + max(gain, 0.0) * self.slack + self.z * plateau_noise(complete, self.plateau)
        return optimistic < incumbent


def _collapsed(trial: FrozenTrial, sign: float, rel: float) -> bool:
    """The objective fell from the trial's own best by more than `rel` relative: it diverged."""
    values = [sign * v for v in trial.intermediate_values.values() if math.isfinite(v)]
    best, now = max(values), sign * trial.intermediate_values[trial.last_step]
    return best - now > rel * abs(best)


def plateau_noise(trials: list[FrozenTrial], plateau: float = 0.5) -> float:
    """Eval noise of the difference of two values: sqrt(2) x the pooled residual standard deviation
    of complete trials' values over the last `plateau` share of their schedules, around a line."""
    residuals: list[float] = []
    for t in trials:
        pts = sorted((s, v) for s, v in t.intermediate_values.items() if s >= (1 - plateau) * 100 and math.isfinite(v))
        if len(pts) < 4:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs) or 1.0
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        residuals += [y - (my + b * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    if len(residuals) < 4:
        return 0.0
    return math.sqrt(2) * math.sqrt(statistics.fmean(r * r for r in residuals))
