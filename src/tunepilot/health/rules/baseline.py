"""The untrained baseline: an eval at step 0 is the model before any training; a run whose every
later eval is worse than it did harm, whatever its curve looks like afterwards.

The same function judges a finished log (`diagnose`: verdict diverged) and a live run at its end
(`engines/recorder.py`: the run ends failed, exit 1, and its "best" checkpoint is not restored).
Live, an eval `baseline_stop_factor` x the baseline stops the run at once (with `stop_on_divergence`).
"""

from __future__ import annotations

from tunepilot.health.findings import Finding, lower_lr
from tunepilot.health.registry import rule
from tunepilot.health.rules.learning_rate import lr_ceiling
from tunepilot.health.series import RunView, finite, sig


def worse_than_untrained(baseline: float | None, later: list[float], margin: float) -> bool:
    """Every eval after step 0 is more than `margin` (a share) above the untrained model's eval loss."""
    later = [v for v in later if finite(v)]
    if baseline is None or not finite(baseline) or baseline <= 0 or not later:
        return False
    return min(later) > baseline * (1 + margin)


def baseline_of(view: RunView) -> tuple[float | None, list[float]]:
    """(eval loss at step 0, the eval losses after it) of a log; None when it has no step-0 eval."""
    pairs = list(zip(view.eval_steps, view.eval_losses, strict=True))
    if not pairs or pairs[0][0] != 0:
        return None, []
    return pairs[0][1], [v for s, v in pairs[1:]]


@rule("worse_than_untrained")
def worse_than_untrained_rule(view: RunView) -> list[Finding]:
    """Every eval after step 0 is worse than the untrained model's: training did harm."""
    s = view.settings
    baseline, later = baseline_of(view)
    if not worse_than_untrained(baseline, later, s.untrained_margin):
        return []
    best, last = min(later), later[-1]
    stop = s.stop_on_divergence and last > baseline * s.baseline_stop_factor
    steps = [st for st in view.eval_steps if st > 0]
    return [
        Finding(
            "worse_than_untrained",
            "error",
            f"diverged: the best eval loss after training, {sig(best)}, is worse than the untrained model's "
            f"{sig(baseline)} (step 0); the latest is {sig(last)}",
            steps=[0, steps[-1]],
            evidence={"baseline_eval_loss": sig(baseline), "best_eval_loss": sig(best), "last_eval_loss": sig(last)},
            changes=[lower_lr(0.1, "training made the model worse than where it started", lr_ceiling(view))],
            verdict="diverged",
            stop=stop,
            instance=0,
        )
    ]
