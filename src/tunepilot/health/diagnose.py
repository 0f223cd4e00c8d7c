"""`diagnose`: the rules over a whole run, one verdict, the evidence, and the config change to make."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tunepilot.health.rules  # noqa: F401  (registers the rules)
from tunepilot.health.findings import SEVERITY_RANK, VERDICTS, Finding
from tunepilot.health.recommend import patch, recommendations, set_args
from tunepilot.health.registry import run_rules
from tunepilot.health.series import RunView
from tunepilot.health.settings import HealthSettings
from tunepilot.logs import RunLog


@dataclass
class Diagnosis:
    verdict: str
    findings: list[Finding]
    recommendations: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)
    mid_run: bool | None = None  # the log ends before the run's planned end (None: the plan is unknown)
    confidence: str = "medium"  # high, medium or low: what the log's evidence can support

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "confidence": self.confidence,
            "mid_run": self.mid_run,
            "findings": [f.to_dict() for f in self.findings],
            "recommendations": self.recommendations,
            "patch": patch(self.recommendations),
            "set_args": set_args(self.recommendations),
            "run": self.run,
        }


def verdict_of(findings: list[Finding]) -> str:
    supported = {f.verdict for f in findings if f.verdict}
    return next((v for v in VERDICTS if v in supported), "healthy")


def view_of(log: RunLog, settings: HealthSettings) -> RunView:
    config = dict(log.config)
    if log.learning_rate is not None:
        config.setdefault("learning_rate", log.learning_rate)
    return RunView.build(
        log.records,
        settings,
        method=log.method,
        learning_rate=log.learning_rate,
        num_params=log.num_params,
        planned_steps=log.planned_steps,
        config=config,
    )


def diagnose(log: RunLog, settings: HealthSettings | None = None) -> Diagnosis:
    settings = settings or HealthSettings()
    view = view_of(log, settings)
    findings = run_rules(view)
    verdict = verdict_of(findings)
    # most important first: the verdict's own findings, then by severity
    findings.sort(key=lambda f: (f.verdict != verdict, -SEVERITY_RANK[f.severity]))
    config = dict(view.config)
    config.setdefault("learning_rate", view.learning_rate)
    return Diagnosis(
        verdict,
        findings,
        recommendations(findings, verdict, config),
        run=log.meta(),
        mid_run=mid_run(log),
        confidence=confidence(view),
    )


def mid_run(log: RunLog) -> bool | None:
    """A checkpoint taken before the run's planned end: its last step below max_steps, or its last
    epoch below num_train_epochs; a run its trainer ended itself (early stopping) is not mid-run."""
    if log.extra.get("stopped"):
        return False
    steps = [r.step for r in log.records]
    last = log.extra.get("last_step") or (max(steps) if steps else None)
    if log.planned_steps and last:
        return last < log.planned_steps
    epochs = [r.epoch for r in log.records if getattr(r, "epoch", None) is not None]
    planned = log.config.get("num_train_epochs")
    if isinstance(planned, (int, float)) and epochs and 0 < planned < 1e6:
        return max(epochs) < planned - 1e-3
    return None


def confidence(view: RunView) -> str:
    """What the evidence supports: train points logged, and an eval curve beside them. A curve of a
    few dozen points without eval loss supports a guess at most (low); high needs both."""
    evals = len(view.eval_losses)
    if (view.n >= 50 and evals >= 3) or view.n >= 200:
        return "high"
    if view.n >= 30 or (view.n >= 10 and evals >= 3):
        return "medium"
    return "low"
