"""The eval curve: overfitting, the train/eval gap, and saying so when there is no eval loss."""

from __future__ import annotations

import math
from statistics import median

from tunepilot.health.findings import Change, Finding, lower_lr
from tunepilot.health.registry import rule
from tunepilot.health.rules.learning_rate import lr_ceiling
from tunepilot.health.series import RunView, rel, sig, trailing_median

MIN_GAP_NATS = 0.1  # relative gaps mean little at tiny losses: a gap must also be this large
EVAL_DIVERGENCE_RISE = 0.2  # eval loss 20% above its best is no noise; with train loss rising, no overfit


def eval_shape(evals: list[float], min_points: int = 6) -> tuple[list[float], float]:
    """(curve to judge, noise share) of the eval losses.

    With `min_points` (6) or more evals the curve is a trailing median of 3, so one lucky eval cannot
    make a minimum, and the noise is a robust estimate of one eval's spread, relative to their level:
    small eval sets give noisy eval losses, and noise must not read as a rise.
    """
    if len(evals) < min_points:
        return list(evals), 0.0
    # Each eval against the mean of its two neighbours: a straight trend cancels out, and for
    # independent noise of spread sigma the difference has spread sigma * sqrt(1.5). (The spread
    # around a centred median of 3 read sigma about half too low, since the median is often the
    # point itself: flat noisy evals then passed for a rise.)
    second = [evals[i] - (evals[i - 1] + evals[i + 1]) / 2 for i in range(1, len(evals) - 1)]
    sigma = 1.4826 * median(abs(d) for d in second) / math.sqrt(1.5)
    return trailing_median(evals, 3), sigma / abs(median(evals) or 1.0)


@rule("overfitting")
def overfitting(view: RunView) -> list[Finding]:
    """Overfitting: the eval loss rises from its minimum for 2+ evals while the train loss falls."""
    s = view.settings
    evals = view.eval_losses
    if len(evals) < 2:
        return []
    curve, noise = eval_shape(evals)
    low_i = curve.index(min(curve))  # where the minimum is: on the smoothed curve (one lucky eval is no minimum)
    if len(evals) - low_i >= 3:
        # the noise where the rise is judged: the steep early descent's curvature is no noise
        noise = eval_shape(evals[max(0, low_i - 2) :], min_points=5)[1]
    evals_after = len(curve) - low_i - 1
    window = range(max(0, low_i - 2), low_i + 1)  # the raw evals behind the smoothed minimum
    best_i = min(window, key=lambda i: evals[i]) if len(evals) >= 6 else low_i
    best, last = evals[best_i], evals[-1]
    rise = rel(last, best)
    # How far it rose: on the raw evals. A trailing median lags a steady rise by one eval, which hid
    # +1.3..1.7% rises over 4 evals in a row (held-out logs); noise is still guarded by 3x its spread.
    # One eval after the minimum (per-epoch evals of a short run) must show a clear rise; two or more
    # may show a smaller one, as long as both of the last two stay up.
    need = max(s.overfit_min_rise if evals_after >= 2 else s.overfit_single_rise, 3 * noise)
    if evals_after < 1 or rise < need or (evals_after >= 2 and min(evals[-2:]) <= best * (1 + need / 2)):
        return []
    best_step, last_step = view.eval_steps[best_i], view.eval_steps[-1]
    train_then, train_now = view.train_level_at(best_step), view.train_level_at(last_step)
    if train_then is not None and train_now is not None and train_now > train_then * 1.02:
        return []  # both rising: the divergence rule speaks, not this one
    epoch = view.epoch_at(best_step)
    train_text = (
        f" while the train loss went {sig(train_then)} -> {sig(train_now)}"
        if train_then is not None and train_now is not None
        else ""
    )
    return [
        Finding(
            "overfitting",
            "error" if rise >= 0.05 else "warning",
            f"overfitting from step {best_step}"
            + (f" (epoch {sig(epoch, 2)})" if epoch is not None else "")
            + f": eval loss rose {sig(best, 4)} -> {sig(last, 4)} (+{sig(last - best)}, +{sig(100 * rise, 2)}%) "
            f"over {len(evals) - best_i - 1} evals{train_text}",
            steps=[best_step, last_step],
            evidence={
                "from_step": best_step,
                "from_epoch": epoch,
                "best_eval_loss": sig(best, 4),
                "last_eval_loss": sig(last, 4),
                "rise": sig(last - best),
                "rise_relative": sig(rise, 2),
                "eval_noise": sig(noise, 2),
                "train_loss_at_best": sig(train_then) if train_then else None,
                "train_loss_at_end": sig(train_now) if train_now else None,
            },
            changes=_overfit_changes(view, best_step, epoch),
            verdict="overfitting",
            instance=best_step,
        )
    ]


@rule("eval_divergence")
def eval_divergence(view: RunView) -> list[Finding]:
    """Both curves got worse: the eval loss ends well above its minimum and the train loss rose too."""
    evals = view.eval_losses
    if len(evals) < 3 or not view.losses:
        return []
    curve, noise = eval_shape(evals)
    low_i = curve.index(min(curve))
    eval_rise = rel(curve[-1], curve[low_i])
    train_then = view.train_level_at(view.eval_steps[low_i])
    train_now = view.train_level_at(view.eval_steps[-1])
    train_rise = rel(train_now, train_then) if train_then else 0.0
    if eval_rise < max(EVAL_DIVERGENCE_RISE, 3 * noise) or train_rise < 0.02 or low_i == len(curve) - 1:
        return []
    diverged = max(eval_rise, train_rise) >= 0.5
    best_step = view.eval_steps[low_i]
    return [
        Finding(
            "eval_divergence",
            "error" if diverged else "warning",
            f"the run got worse after step {best_step}: eval loss +{sig(100 * eval_rise, 2)}% above its best "
            f"and train loss +{sig(100 * train_rise, 2)}% over the same span (not overfitting: the train loss "
            "rose too); the updates are too large",
            steps=[best_step, view.eval_steps[-1]],
            evidence={
                "from_step": best_step,
                "eval_rise": sig(eval_rise, 2),
                "train_rise": sig(train_rise, 2),
                "eval_noise": sig(noise, 2),
            },
            changes=[
                lower_lr(0.3, "both losses rose: the steps are too large", lr_ceiling(view)),
                Change("warmup_ratio", "a longer warmup lets the optimizer statistics settle", minimum=0.05),
                Change("max_grad_norm", "clip gradients", value=1.0),
            ],
            verdict="diverged" if diverged else "unstable",
            instance=best_step,
        )
    ]


def _overfit_changes(view: RunView, best_step: int, epoch: float | None) -> list[Change]:
    changes = []
    if epoch is not None and epoch > 0:
        changes.append(
            Change(
                "num_train_epochs",
                f"the eval loss was best at epoch {sig(epoch, 2)}",
                value=max(0.5, math.ceil(epoch * 2) / 2),
            )
        )
    else:
        changes.append(Change("max_steps", f"the eval loss was best at step {best_step}", value=best_step))
    changes += [
        Change("early_stopping_patience", "stop when the eval loss stops improving", value=2),
        Change("load_best_model_at_end", "keep the adapter of the best eval", value=True),
    ]
    if view.method in (None, "lora"):
        changes += [
            Change("lora_alpha", "a smaller LoRA update scale fits the training set less tightly", factor=0.5),
            Change("lora_dropout", "dropout on the adapter input regularises it", minimum=0.05),
        ]
    return changes


@rule("train_eval_gap")
def train_eval_gap(view: RunView) -> list[Finding]:
    """Train/eval gap: eval loss far above the train loss at the same step, and widening."""
    gaps = []
    for step, loss in zip(view.eval_steps, view.eval_losses, strict=True):
        train = view.train_level_at(step)
        if train and train > 0:
            gaps.append((step, rel(loss, train), loss, train))
    if len(gaps) < 2:
        return []
    first, last = gaps[0], gaps[-1]
    ratio = view.settings.gap_ratio
    if last[1] <= ratio or last[1] - first[1] <= ratio / 2 or last[2] - last[3] < MIN_GAP_NATS:
        return []
    return [
        Finding(
            "train_eval_gap",
            "warning",
            f"eval loss {sig(last[2])} is {sig(100 * last[1], 2)}% above the train loss {sig(last[3])} at step "
            f"{last[0]} (was {sig(100 * first[1], 2)}% at step {first[0]}): the model fits the training set "
            "much better than held-out data",
            steps=[first[0], last[0]],
            evidence={
                "first_step": first[0],
                "first_gap": sig(first[1], 2),
                "last_step": last[0],
                "last_gap": sig(last[1], 2),
            },
            changes=[
                Change("lora_dropout", "regularise the adapter", minimum=0.05),
                Change("weight_decay", "regularise the weights", minimum=0.01),
            ],
            instance=first[0],
        )
    ]


@rule("no_eval_data", live=False)
def no_eval_data(view: RunView) -> list[Finding]:
    """No eval loss in the log: say that overfitting cannot be judged."""
    if view.eval_losses or not view.train:
        return []
    metrics = sorted({k for e in view.evals for k in e.metrics})
    what = f"the evaluations log only {', '.join(metrics[:5])}, no eval loss" if metrics else "no eval loss in the log"
    return [
        Finding(
            "no_eval_data",
            "info",
            f"{what}: overfitting cannot be judged",
            evidence={"eval_points": len(view.evals), "eval_metrics": metrics[:10]},
            changes=[Change("val_size", "hold out a small eval split to watch for overfitting", minimum=0.05)],
        )
    ]
