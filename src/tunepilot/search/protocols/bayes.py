"""bayes: the sampler proposes every trial, the pruner judges every report (Optuna's usual loop)."""

from __future__ import annotations

import optuna

from tunepilot.search.protocols.base import Ask, Protocol
from tunepilot.search.space import suggest_all


class Bayes(Protocol):
    name = "bayes"

    def ask(self) -> Ask:
        trial = self.study.ask()
        error = suggest_all(trial, self.space)
        # an enqueued trial (the sweep file's, a retry) was chosen on purpose; a sampled one was not
        enqueued = trial.user_attrs.get("retry_of") is not None or trial.user_attrs.get("enqueued", False)
        return Ask(
            trial,
            stop_at=float(trial.user_attrs.get("stop_at", 1.0)),
            error=error,
            on_duplicate="copy" if enqueued else "reject",
        )

    def should_prune(self, trial: optuna.Trial, fraction: float) -> bool:
        return trial.should_prune()

    @property
    def done(self) -> bool:
        # a grid sampler is done once every point of the grid has a trial
        exhausted = getattr(self.study.sampler, "is_exhausted", None)
        return bool(exhausted and exhausted(self.study))
