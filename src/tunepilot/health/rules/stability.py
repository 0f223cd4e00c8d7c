"""Instability: divergence, loss spikes, oscillation, grad-norm explosions."""

from __future__ import annotations

from statistics import median

from tunepilot.health.findings import Change, Finding, clip_gradients, lower_lr, more_warmup
from tunepilot.health.registry import rule
from tunepilot.health.rules.learning_rate import lr_ceiling
from tunepilot.health.series import RunView, finite, rel, sig


def _rising_stretch(view: RunView) -> tuple[int, int, int] | None:
    """(start index, end index, index of the running minimum) of the last stretch where the
    smoothed loss stayed above divergence_factor x its running minimum, or above both 1.25x its
    start and 1.5x its minimum (worse than where it began)."""
    s = view.settings
    start = view.start_level()
    run_min, min_i = float("inf"), 0
    stretch: tuple[int, int, int] | None = None
    begin = None
    for i, t in enumerate(view.trend):
        if t < run_min:
            run_min, min_i = t, i
        # "worse than where it began" only counts once the loss had first improved past the start
        # phase: a slightly rising first few steps of warmup is common and harmless
        worse = t > 1.25 * start and t > 1.5 * run_min and min_i >= view.window
        high = run_min > 0 and (t > s.divergence_factor * run_min or worse)  # ratios need a positive loss
        if high and i > min_i:
            begin = i if begin is None else begin
            stretch = (begin, i, min_i)
        else:
            begin = None
    return stretch


@rule("divergence")
def divergence(view: RunView) -> list[Finding]:
    """Sustained rise: the smoothed loss far above its minimum for divergence_patience points."""
    s = view.settings
    if view.n < 4:
        return []
    stretch = _rising_stretch(view)
    if stretch is None or stretch[1] - stretch[0] + 1 < s.divergence_patience:
        return []
    begin, end, min_i = stretch
    ongoing = end == view.n - 1
    evidence = {
        "min_step": view.steps[min_i],
        "min_loss": sig(view.trend[min_i]),
        "from_step": view.steps[begin],
        "loss": sig(view.trend[end]),
        "ratio_to_min": sig(view.trend[end] / view.trend[min_i]) if view.trend[min_i] else None,
    }
    changes = [
        lower_lr(0.3, "the loss ran away from its minimum: the steps are too large", lr_ceiling(view)),
        more_warmup(0.05),
        clip_gradients(),
    ]
    if ongoing:
        return [
            Finding(
                "divergence",
                "error",
                f"diverged: smoothed loss {sig(view.trend[end])} at step {view.steps[end]} is "
                f"{evidence['ratio_to_min']}x its minimum {sig(view.trend[min_i])} (step {view.steps[min_i]}), "
                f"rising since step {view.steps[begin]}",
                steps=[view.steps[min_i], view.steps[begin], view.steps[end]],
                evidence=evidence,
                changes=changes,
                verdict="diverged",
                stop=view.settings.stop_on_divergence,
                instance=view.steps[begin],
            )
        ]
    return [
        Finding(
            "divergence_recovered",
            "warning",
            f"the loss ran away between steps {view.steps[begin]} and {view.steps[end]} "
            f"(up to {evidence['ratio_to_min']}x its minimum) and then recovered",
            steps=[view.steps[begin], view.steps[end]],
            evidence=evidence,
            changes=changes,
            verdict="unstable",
            instance=view.steps[begin],
        )
    ]


# Below these a "spike" is rounding (losses logged to 4 decimals: 0.0001 -> 0.0003 is 3x) or harmless
# (a grad norm under the usual clip norm of 1 cannot blow up an update).
LOSS_SPIKE_MIN_JUMP = 0.05
GRAD_SPIKE_MIN_NORM = 1.0


def _spikes(values: list[float], window: int, factor: float, floor: float = 0.0) -> list[int]:
    """Indices where a value exceeds factor x the median of the window before it (and the floor)."""
    out = []
    for i in range(window, len(values)):
        base = median(values[i - window : i])
        if base > 0 and values[i] > factor * base and values[i] > floor:
            out.append(i)
    return out


def _unstable(count: int, n: int, share: float) -> bool:
    return count >= max(3, share * n)


@rule("loss_spikes")
def loss_spikes(view: RunView) -> list[Finding]:
    """Loss spikes: a point above spike_factor x the median of the points before it."""
    s = view.settings
    idx = [
        i
        for i in _spikes(view.losses, view.window, s.spike_factor)
        if view.losses[i] - median(view.losses[i - view.window : i]) >= LOSS_SPIKE_MIN_JUMP
    ]
    if not idx:
        return []
    steps = [view.steps[i] for i in idx]
    worst = max(idx, key=lambda i: view.losses[i] / max(median(view.losses[i - view.window : i]), 1e-12))
    many = _unstable(len(idx), view.n, s.unstable_share)
    return [
        Finding(
            "loss_spikes",
            "warning",
            f"{len(idx)} loss spike(s) above {s.spike_factor}x the recent median (worst at step "
            f"{view.steps[worst]}: {sig(view.losses[worst])})" + ("; too many for a stable run" if many else ""),
            steps=steps[:50],
            evidence={
                "count": len(idx),
                "share": sig(len(idx) / view.n),
                "worst_step": view.steps[worst],
                "worst_loss": sig(view.losses[worst]),
            },
            changes=[
                lower_lr(0.5, "spikes are updates that overshoot", lr_ceiling(view)),
                clip_gradients(),
                more_warmup(0.05),
            ],
            verdict="unstable" if many else None,
            instance=steps[-1],
        )
    ]


def _zigzag(values: list[float], window: int) -> float:
    """Lag-1 autocorrelation of the residuals around a centred median: about 0 for batch noise,
    strongly negative when each step overshoots the last (the loss bounces up, down, up)."""
    half = window // 2
    resid = [v - median(values[max(0, i - half) : i + half + 1]) for i, v in enumerate(values)]
    mean = sum(resid) / len(resid)
    dev = [r - mean for r in resid]
    var = sum(d * d for d in dev)
    return sum(a * b for a, b in zip(dev, dev[1:], strict=False)) / var if var > 0 else 0.0


@rule("oscillation")
def oscillation(view: RunView) -> list[Finding]:
    """Oscillation: the typical step-to-step jump is large relative to the smoothed loss level."""
    s = view.settings
    half = view.losses[view.n // 2 :]
    if view.n < max(12, 3 * view.window) or len(half) < 6:
        return []
    jump = median(abs(b - a) for a, b in zip(half, half[1:], strict=False))
    level = median(half)
    if level < 0.05 or jump / level <= s.oscillation_ratio:
        return []
    ratio, zigzag = jump / level, _zigzag(half, max(3, view.window | 1))
    # Small batches make a per-step loss noisy without anything being wrong: that is a warning.
    # A bouncing loss (each step overshooting the last) or an extreme jump is an unstable run.
    unstable = zigzag < -0.25 or ratio > 2 * s.oscillation_ratio
    return [
        Finding(
            "oscillation",
            "warning",
            f"the loss jumps by {sig(100 * ratio, 2)}% of its level from one logged point to the next over the "
            f"second half of the run (median jump {sig(jump)} at level {sig(level)})"
            + (
                ": it bounces, the LR is too high for this batch size"
                if unstable
                else ": noisy batches (a larger batch or gradient accumulation would smooth it)"
            ),
            steps=[view.steps[view.n // 2], view.steps[-1]],
            evidence={"median_jump": sig(jump), "level": sig(level), "ratio": sig(ratio), "zigzag": sig(zigzag, 2)},
            changes=[
                lower_lr(0.4, "smaller steps stop the bouncing", lr_ceiling(view)),
                more_warmup(0.1),
                Change("gradient_accumulation_steps", "a larger batch averages the noise out", factor=2),
            ],
            verdict="unstable" if unstable else None,
            instance=view.steps[view.n // 2],
        )
    ]


@rule("grad_norm")
def grad_norm(view: RunView) -> list[Finding]:
    """Grad-norm explosions: a norm above grad_norm_factor x the median of the norms before it."""
    s = view.settings
    pairs = [(r.step, r.grad_norm) for r in view.train if finite(r.grad_norm)]
    if len(pairs) < view.window + 1:
        return []
    norms = [g for _, g in pairs]
    idx = _spikes(norms, view.window, s.grad_norm_factor, floor=GRAD_SPIKE_MIN_NORM)
    early, late = median(norms[: max(3, len(norms) // 4)]), median(norms[-max(3, len(norms) // 4) :])
    growing = len(norms) >= 12 and early > 0 and late > max(s.grad_norm_factor * early, GRAD_SPIKE_MIN_NORM)
    if not idx and not growing:
        return []
    many = _unstable(len(idx), len(norms), s.unstable_share) or growing
    steps = [pairs[i][0] for i in idx]
    what = f"{len(idx)} grad-norm explosion(s) above {s.grad_norm_factor}x the recent median" if idx else ""
    if growing:
        what += ("; " if what else "") + f"grad norm grew {sig(late / early, 2)}x from the start to the end"
    return [
        Finding(
            "grad_norm",
            "warning",
            what,
            steps=steps[:50],
            evidence={
                "count": len(idx),
                "early_median": sig(early),
                "late_median": sig(late),
                "max": sig(max(norms)),
                "max_step": pairs[norms.index(max(norms))][0],
                "growth": sig(rel(late, early) + 1, 2),
            },
            changes=[
                clip_gradients(),
                lower_lr(0.5, "large gradients times a large LR are the instability", lr_ceiling(view)),
            ],
            verdict="unstable" if many else None,
            instance=steps[-1] if steps else 0,
        )
    ]
