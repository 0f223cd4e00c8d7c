"""What a protocol is: it decides which trial to start next, when to stop one, and when it is done.

The slot loop (tunepilot.search.loop) asks the protocol for a trial whenever an engine slot is
free, routes every report to `should_prune`, and stops when `done`. A protocol keeps no state that
the study cannot give back: it re-derives where it is from the study's trials (their `stage` user
attr and values), so a resumed sweep continues where it was killed. Its decisions are recorded as
plain dicts (stage, choice, reason, evidence) in the study's user attrs and shown by the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from tunepilot.search.spec import SweepSpec


@dataclass
class Ask:
    """A trial to start: the asked Optuna trial, and the schedule share at which to end it."""

    trial: optuna.Trial
    stop_at: float = 1.0  # end the trial (as pruned) once it reached this fraction of its schedule
    stage: str | None = None
    error: str | None = None  # the trial could not get its params (e.g. an enqueued NaN): it fails
    # a configuration that already ran: "copy" its result (a protocol's own choice), or "reject" the
    # proposal (a sampler's: failed as a duplicate, invisible to the sampler, which proposes again)
    on_duplicate: str = "copy"


class Protocol:
    name = "protocol"

    def __init__(
        self,
        spec: SweepSpec,
        study: optuna.Study,
        space: dict[str, BaseDistribution],
        base: Any = None,
        options: dict[str, Any] | None = None,
    ):
        self.spec, self.study, self.space, self.base = spec, study, space, base
        self.options = options or {}
        self.decisions: list[dict[str, Any]] = list(study.user_attrs.get("decisions", []))

    def ask(self) -> Ask | None:
        """The next trial to start, or None when nothing should start until a running trial ends."""
        raise NotImplementedError

    def should_prune(self, trial: optuna.Trial, fraction: float) -> bool:
        return False

    @property
    def done(self) -> bool:
        """True when the protocol has nothing more to run (the budget may end it earlier)."""
        return False

    def decide(self, stage: str, choice: Any, reason: str, **evidence: Any) -> None:
        """Record a decision once (a resumed run re-derives the same ones)."""
        entry = {"stage": stage, "choice": choice, "reason": reason, **evidence}
        if any(d.get("stage") == stage for d in self.decisions):
            return
        self.decisions.append(entry)
        self.study.set_user_attr("decisions", self.decisions)
