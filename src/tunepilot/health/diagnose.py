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

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "findings": [f.to_dict() for f in self.findings],
                "recommendations": self.recommendations, "patch": patch(self.recommendations),
                "set_args": set_args(self.recommendations), "run": self.run}


def verdict_of(findings: list[Finding]) -> str:
    supported = {f.verdict for f in findings if f.verdict}
    return next((v for v in VERDICTS if v in supported), "healthy")


def view_of(log: RunLog, settings: HealthSettings) -> RunView:
    config = dict(log.config)
    if log.learning_rate is not None:
        config.setdefault("learning_rate", log.learning_rate)
    return RunView.build(log.records, settings, method=log.method, learning_rate=log.learning_rate,
                         num_params=log.num_params, planned_steps=log.planned_steps, config=config)


def diagnose(log: RunLog, settings: HealthSettings | None = None) -> Diagnosis:
    settings = settings or HealthSettings()
    view = view_of(log, settings)
    findings = run_rules(view)
    verdict = verdict_of(findings)
    # most important first: the verdict's own findings, then by severity
    findings.sort(key=lambda f: (f.verdict != verdict, -SEVERITY_RANK[f.severity]))
    config = dict(view.config)
    config.setdefault("learning_rate", view.learning_rate)
    return Diagnosis(verdict, findings, recommendations(findings, verdict, config), run=log.meta())
