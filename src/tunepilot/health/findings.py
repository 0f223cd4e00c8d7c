"""What a rule returns: a Finding with evidence and the config changes that address it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}

# The fixed verdicts, strongest first: the first one any finding supports is the run's verdict.
# A run that broke (no data, NaN, divergence) says so before anything else; a run too short to judge
# says that before its curve shapes are read; instability explains overfitting-looking curves, so it
# comes before them; stalled and underfitting are the mildest judgements.
VERDICTS = (
    "no-training-data",
    "diverged",
    "too-short",
    "unstable",
    "overfitting",
    "stalled",
    "underfitting",
    "healthy",
)


@dataclass
class Change:
    """One suggested config change, in tunepilot's flat keys (what `train --set key=value` takes).

    `value` sets a value; `factor` scales the run's value (needs it known); `minimum`/`maximum`
    bound it (a value already inside the bound is left alone).
    """

    key: str
    reason: str
    value: Any = None
    factor: float | None = None
    minimum: float | None = None
    maximum: float | None = None


@dataclass
class Finding:
    code: str
    severity: Severity
    message: str
    steps: list[int] = field(default_factory=list)  # where it shows, for evidence and the plot
    evidence: dict[str, Any] = field(default_factory=dict)  # the numbers behind the message
    changes: list[Change] = field(default_factory=list)
    verdict: str | None = None  # the verdict this finding supports, if any
    stop: bool = False  # a live run must stop (the monitor checks the matching settings switch)
    instance: int | None = None  # step that identifies this episode, so live alerts are not repeated

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changes"] = [{k: v for k, v in c.items() if v is not None} for c in data["changes"]]
        return data


def lower_lr(factor: float, reason: str, ceiling: float | None = None) -> Change:
    """LR x factor, and no higher than `ceiling` (a factor of 0.3 does not fix an LR 1000x too high)."""
    return Change("learning_rate", reason, factor=factor, maximum=ceiling)


def clip_gradients(reason: str = "clip gradients so one bad batch cannot blow up the update") -> Change:
    return Change("max_grad_norm", reason, value=1.0)


def more_warmup(share: float, reason: str = "a longer warmup lets the optimizer statistics settle") -> Change:
    return Change("warmup_ratio", reason, minimum=share)
