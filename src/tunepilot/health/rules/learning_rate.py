"""Learning rate out of the usual range for the method and the model size.

Reference ranges are for a ~1B-parameter model (community practice for HF/PEFT fine-tuning):
LoRA 1e-5 .. 1e-3, full fine-tuning 1e-6 .. 1e-4. Larger models want smaller steps: full fine-tuning
scales the range by (1e9 / N)^0.5 (the width-scaling intuition of muP-style transfer: updates per
weight shrink as 1/width, and width ~ sqrt(N) at fixed aspect ratio); LoRA is much less sensitive,
(1e9 / N)^0.25. Both factors are clamped to [0.1, 3]. Example: LoRA on 7B -> 6.1e-6 .. 6.1e-4;
full fine-tuning of 7B -> 3.8e-7 .. 3.8e-5.
"""

from __future__ import annotations

from tunepilot.health.findings import Change, Finding
from tunepilot.health.registry import rule
from tunepilot.health.series import RunView, sig, size_text

BASE_RANGE = {"lora": (1e-5, 1e-3), "full": (1e-6, 1e-4)}
SIZE_EXPONENT = {"lora": 0.25, "full": 0.5}
REFERENCE_PARAMS = 1e9


def lr_range(method: str, num_params: int | None) -> tuple[float, float]:
    low, high = BASE_RANGE[method]
    if num_params:
        factor = min(3.0, max(0.1, (REFERENCE_PARAMS / num_params) ** SIZE_EXPONENT[method]))
        low, high = low * factor, high * factor
    return low, high


def usual_range(view: RunView) -> tuple[float, float, str]:
    """(low, high, method label) for the run; an unknown method gets the union of both ranges."""
    if view.method in BASE_RANGE:
        low, high = lr_range(view.method, view.num_params)
        return low, high, view.method
    return lr_range("full", view.num_params)[0], lr_range("lora", view.num_params)[1], "lora or full"


def lr_ceiling(view: RunView) -> float:
    """The most an instability fix should suggest: half the top of the usual range."""
    return sig(usual_range(view)[1] / 2, 2)


@rule("lr_range")
def lr_out_of_range(view: RunView) -> list[Finding]:
    """Configured (or peak logged) learning rate outside the usual range for the method and size."""
    lr = view.learning_rate
    if not lr or lr <= 0:
        return []
    low, high, method = usual_range(view)  # method unknown: only what is out of range for both
    if low <= lr <= high:
        return []
    above = lr > high
    suggestion = high / 2 if above else low * 2
    size = f", {size_text(view.num_params)} parameters" if view.num_params else ""
    return [
        Finding(
            "lr_range",
            "warning",
            f"learning rate {sig(lr)} is {'above' if above else 'below'} the usual range {sig(low, 2)} .. "
            f"{sig(high, 2)} for {method}{size}",
            evidence={
                "learning_rate": lr,
                "low": sig(low, 2),
                "high": sig(high, 2),
                "method": method,
                "num_params": view.num_params,
            },
            changes=[
                Change(
                    "learning_rate", "move into the usual range (then confirm with lr-find)", value=sig(suggestion, 2)
                )
            ],
            instance=0,
        )
    ]
