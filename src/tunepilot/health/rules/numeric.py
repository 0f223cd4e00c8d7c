"""Numbers that are not a loss: NaN or Inf, and a loss that suddenly collapses to exactly zero."""

from __future__ import annotations

from tunepilot.health.findings import Change, Finding, clip_gradients, lower_lr, more_warmup
from tunepilot.health.registry import rule
from tunepilot.health.rules.learning_rate import lr_ceiling
from tunepilot.health.series import RunView, finite, sig


@rule("nan_inf")
def nan_inf(view: RunView) -> list[Finding]:
    """NaN or Inf in the train loss, the eval loss or (persistently) the grad norm."""
    bad = [r.step for r in view.train if not finite(r.loss)]
    bad += [e.step for e in view.evals if e.eval_loss is not None and not finite(e.eval_loss)]
    grad_bad = [r.step for r in view.train if finite(r.loss) and r.grad_norm is not None and not finite(r.grad_norm)]
    # fp16 loss scaling skips overflowing steps and logs their grad norm as inf/nan while the loss
    # stays finite: harmless once in a while, a broken run when it never stops.
    tail = view.train[-3:]
    grad_stuck = len(tail) == 3 and all(r.grad_norm is not None and not finite(r.grad_norm) for r in tail)
    if grad_stuck:
        bad += [r.step for r in tail]
    if bad:
        bad = sorted(set(bad))
        last_good = [s for s in view.steps if s < bad[0]]
        return [
            Finding(
                "nan_inf",
                "error",
                f"loss or grad norm became NaN/Inf at step {bad[0]} ({len(bad)} point(s)); the weights are "
                "likely corrupted from there on",
                steps=bad[:20],
                evidence={
                    "first_step": bad[0],
                    "count": len(bad),
                    "last_finite_step": last_good[-1] if last_good else None,
                },
                changes=[
                    lower_lr(0.3, "NaN/Inf almost always means the update was too large", lr_ceiling(view)),
                    clip_gradients(),
                    more_warmup(0.05),
                ],
                verdict="diverged",
                stop=view.settings.stop_on_nan,
                instance=bad[0],
            )
        ]
    if grad_bad:
        return [
            Finding(
                "nan_grad_norm",
                "warning",
                f"{len(grad_bad)} step(s) logged a NaN/Inf grad norm while the loss stayed finite (first at step "
                f"{grad_bad[0]}); with fp16 these are skipped updates, harmless if rare",
                steps=grad_bad[:20],
                evidence={"first_step": grad_bad[0], "count": len(grad_bad)},
                instance=grad_bad[0],
            )
        ]
    return []


@rule("zero_collapse")
def zero_collapse(view: RunView) -> list[Finding]:
    """Loss exactly zero: a sudden collapse (broken run) or a slow slide (memorised training data)."""
    zeros = [i for i, loss in enumerate(view.losses) if loss <= 1e-12]
    if not zeros:
        return []
    first = zeros[0]
    before = view.losses[max(0, first - 3) : first]
    level = min(before) if before else 0.0
    step = view.steps[first]
    if level > 0.05:  # from a real loss straight to exactly 0: not learning, breaking
        return [
            Finding(
                "zero_collapse",
                "error",
                f"loss collapsed to exactly 0 at step {step} from about {sig(level)}; usually no trained tokens "
                "in the batch (label masking), or an fp16 overflow reported as 0",
                steps=[view.steps[i] for i in zeros[:20]],
                evidence={"step": step, "loss_before": sig(level), "zero_points": len(zeros)},
                changes=[
                    lower_lr(0.3, "a collapse after a real loss follows an update that was too large", lr_ceiling(view))
                ],
                verdict="diverged",
                stop=view.settings.stop_on_collapse,
                instance=step,
            )
        ]
    return [
        Finding(
            "zero_loss",
            "warning",
            f"train loss slid down to 0 at step {step}: the model memorised the training data",
            steps=[step],
            evidence={"step": step, "zero_points": len(zeros)},
            changes=[Change("num_train_epochs", "fewer passes over the data", factor=0.5)],
            instance=step,
        )
    ]
