"""Is the run learning: no data, too few points, stalled, or still falling steeply at the end."""

from __future__ import annotations

import math
from statistics import median

from tunepilot.health.findings import Change, Finding
from tunepilot.health.registry import rule
from tunepilot.health.rules.learning_rate import lr_range
from tunepilot.health.series import RunView, finite, rel, sig

UNDERFIT_MIN_PACE = 0.4  # the end must fall at 40% or more of the run's average pace per point

STALL_CHECKS = [
    "labels: are the response tokens trained (label masking, train_on_prompt)? a batch of masked labels "
    "gives no gradient",
    "data: is the training set the one you meant, non-empty and shuffled (not one batch repeated)?",
    "adapter: does lora_target match the model's module names (trainable parameters > 0)?",
    "schedule: is the learning rate not stuck near 0 (warmup longer than the run, a constant-0 scheduler)?",
]


@rule("no_training_data", live=False)
def no_training_data(view: RunView) -> list[Finding]:
    """No train loss in the log at all (prediction-only logs, logging_steps above the run length)."""
    if view.train:
        return []
    evals = [e for e in view.evals if finite(e.eval_loss)]
    why = "the log holds no train loss"
    if view.config.get("do_predict") and not view.config.get("do_train"):
        why = "a prediction run (do_predict), not a training run: the log holds no train loss"
    if view.evals:
        why += f" (only {len(view.evals)} evaluation(s)" + (", no eval loss either)" if not evals else ")")
    logging = view.config.get("logging_steps")
    if view.planned_steps and isinstance(logging, int) and logging > view.planned_steps:
        why += f"; logging_steps {logging} is larger than the {view.planned_steps} steps of the run"
    return [
        Finding(
            "no_training_data",
            "error",
            why + ": nothing to judge",
            verdict="no-training-data",
            evidence={"eval_points": len(view.evals)},
            changes=[Change("logging_steps", "log the loss often enough to see the curve", maximum=10)],
        )
    ]


@rule("too_few_points", live=False)
def too_few_points(view: RunView) -> list[Finding]:
    """Too few logged train points to judge, or a run cut off far before its planned end."""
    if not view.train:
        return []
    last, planned = view.train[-1].step, view.planned_steps
    share = f"{sig(100 * last / planned, 2)}%" if planned else ""
    evidence = {"last_step": last, "planned_steps": planned}
    if planned and last < 0.1 * planned:
        return [
            Finding(
                "cut_off",
                "warning",
                f"the run stopped at step {last} of its planned {planned} ({share}): too early to judge",
                verdict="too-short",
                steps=[last],
                evidence=evidence,
            )
        ]
    few = len(view.train) < view.settings.min_points
    if few and len(view.eval_losses) >= 3:
        # sparse train logging (per epoch, or logging_steps 100 on a short run) but an eval curve: judge it
        return [
            Finding(
                "few_train_points",
                "info",
                f"only {len(view.train)} logged train point(s); the {len(view.eval_losses)} eval "
                "losses carry the judgement",
                evidence={"points": len(view.train)},
            )
        ]
    if few:
        return [
            Finding(
                "too_few_points",
                "warning",
                f"only {len(view.train)} logged train point(s) (fewer than "
                f"{view.settings.min_points}): too few to judge the curve",
                verdict="too-short",
                evidence={"points": len(view.train), "min_points": view.settings.min_points},
                changes=[Change("logging_steps", "log the loss more often", maximum=10)],
            )
        ]
    if planned and last < 0.9 * planned:
        return [
            Finding(
                "cut_off",
                "info",
                f"the run stopped at step {last} of its planned {planned} ({share})",
                steps=[last],
                evidence=evidence,
            )
        ]
    return []


@rule("stalled", live=False)
def stalled(view: RunView) -> list[Finding]:
    """Stalled: the smoothed loss barely fell from its start, or gained little and is flat since."""
    s = view.settings
    if view.n < s.min_points:
        return []
    start = view.start_level()
    if start < 0:
        return []  # a loss that can be negative (some preference losses): no relative gain to judge
    best = min(view.trend[min(view.window, view.n) - 1 :])
    gain = -rel(best, start) if start > 1e-8 else 0.0
    half = view.trend[view.n // 2 :]
    half_gain = -rel(min(half), half[0]) if half[0] > 1e-8 else 0.0
    # A converged run is flat too, but only after a real drop; a flat second half after a small
    # gain is a run that stopped learning early (LR far too high or low, dead adapter, bad labels).
    end = view.end_level()
    end_gain = -rel(end, start) if start > 1e-8 else 0.0
    # Calibrated on the corpus dev half (bench/diagnose_corpus.py): the labellers called a run stalled
    # when its second half of a multi-epoch run gained under 3% at a level still near its start (the
    # data seen again and again, yet no progress), and when its end was no better than its start
    # however much it wandered on the way; a single-epoch run flat after its early drop was healthy.
    epochs = view.epoch_at(view.steps[-1]) or 0.0
    stuck_high = half_gain < 0.03 and epochs >= s.stall_min_epochs and end > s.stall_high_share * start
    plateau = (half_gain < 0.01 and gain < s.stall_plateau_gain) or stuck_high
    if gain >= s.stall_min_improvement and end_gain > 0 and not plateau:
        return []
    evals = view.eval_losses
    if len(evals) >= 3 and evals[-1] <= min(evals[:-1]):
        return []  # the held-out loss is still at its best at the end: slow learning (underfitting), not a stall
    lrs = [r.lr for r in view.train if finite(r.lr)]
    lr_note = "; the logged learning rate is 0 throughout" if lrs and max(lrs) <= 0 else ""
    what = (
        f"the smoothed train loss went from {sig(start)} to at best {sig(best)} ({sig(100 * gain, 2)}%)"
        + (" and has been flat over the second half of the run" if plateau else "")
        + lr_note
    )
    return [
        Finding(
            "stalled",
            "warning",
            f"no real improvement: {what}",
            steps=[view.steps[0], view.steps[view.n // 2], view.steps[-1]],
            evidence={
                "start": sig(start),
                "best": sig(best),
                "improvement": sig(gain, 2),
                "second_half_improvement": sig(half_gain, 2),
                "checks": STALL_CHECKS,
            },
            changes=_stall_lr_change(view, plateau),
            verdict="stalled",
            instance=0,
        )
    ]


def _stall_lr_change(view: RunView, plateau: bool) -> list[Change]:
    """A loss that never moved wants a larger LR; one that moved once and froze may have had one far
    too large (the weights saturate and the gradients vanish): the usual range decides."""
    lr, method = view.learning_rate, view.method if view.method in ("lora", "full") else "lora"
    low, high = lr_range(method, view.num_params)
    if lr and lr > high:
        return [
            Change(
                "learning_rate",
                "far above the usual range: the loss froze after the first steps",
                value=sig(high / 2, 2),
            )
        ]
    if plateau and not (lr and lr < low):
        return []
    return [Change("learning_rate", "if the pipeline checks pass, the LR is too low to move the loss", factor=3.0)]


@rule("underfitting", live=False)
def underfitting(view: RunView) -> list[Finding]:
    """Underfitting: the train loss (or the eval loss) is still falling steeply at the end."""
    s = view.settings
    if view.n < max(8, s.min_points):
        return []
    tail = view.losses[-max(6, math.ceil(s.underfit_tail_share * view.n)) :]
    third = max(2, len(tail) // 3)
    before, after = median(tail[:third]), median(tail[-third:])
    drop = -rel(after, before)
    # "steeply": the end still falls at a good share of the run's average pace, not a long tail
    # flattening out (a 6% drop at the end of a run that fell 60% is convergence)
    overall = view.start_level() - view.end_level()  # in loss units: relative drops shrink with the level
    tail_rate = (before - after) / max(1, len(tail) - third)
    pace = tail_rate / (overall / max(1, view.n - 1)) if overall > 0 else 0.0
    if pace < UNDERFIT_MIN_PACE:
        drop = 0.0
    eval_drop, slow = 0.0, False  # the last eval against the best before it: still improving, by how much
    evals = view.eval_losses
    if len(evals) >= 3:
        # With an eval curve the held-out loss decides (corpus dev half: a train loss still falling
        # beside a flattening eval loss was labelled healthy): a train loss still falling is then
        # fitting the training set, and a longer run would not do better. A drop must also be real
        # in nats (an eval loss of 0.001 moving 5% is no evidence).
        eval_drop = -rel(evals[-1], min(evals[:-1]))
        if min(evals[:-1]) - evals[-1] < s.underfit_eval_min_nats:
            eval_drop = 0.0
        drop = 0.0
        # still at its best at the end after gaining little overall: learning, but slowly (the
        # labellers' "barely improved" runs: an LR far too low, or far too few steps)
        train_gain = -rel(view.end_level(), view.start_level()) if view.start_level() > 1e-8 else 1.0
        slow = (
            evals[-1] <= min(evals)
            and -rel(evals[-1], evals[0]) < s.underfit_slow_gain
            and train_gain < s.underfit_slow_gain
        )
    if drop < s.underfit_min_drop and eval_drop < s.underfit_eval_min_drop and not slow:
        return []
    if drop >= s.underfit_min_drop:
        what = f"the train loss fell {sig(100 * drop, 2)}% over the last {len(tail)} points"
    elif eval_drop >= s.underfit_eval_min_drop:
        what = f"the last evaluation beat the best before it by {sig(100 * eval_drop, 2)}%"
    else:
        what = (
            f"the eval loss is still at its best at the end but gained only "
            f"{sig(-100 * rel(evals[-1], evals[0]), 2)}% over the run (the LR may be far too low)"
        )
    return [
        Finding(
            "underfitting",
            "warning",
            f"still learning at the end: {what}; a longer run would likely do better",
            steps=[view.steps[-len(tail)], view.steps[-1]],
            evidence={
                "tail_points": len(tail),
                "tail_drop": sig(drop, 2),
                "tail_pace": sig(pace, 2),
                "last_eval_drop": sig(eval_drop, 2),
                "end_loss": sig(view.end_level()),
            },
            changes=[
                Change("num_train_epochs", "the loss had not levelled off", factor=2.0),
                Change("learning_rate", "or reach the plateau sooner with a larger LR", factor=1.5),
                Change("lora_rank", "more adapter capacity if a longer run still underfits", factor=2),
            ],
            verdict="underfitting",
            instance=0,
        )
    ]
