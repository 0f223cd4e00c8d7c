"""The live monitor: the same rules as `diagnose`, run on the records of a run as they arrive.

The engine feeds every record to `observe()` and writes the events it returns to the stream. When
`stop_event` is set the engine stops the run and records the reason (NaN/Inf, a collapse to zero or
a divergence, each behind its `stop_on_*` switch). Early stopping on eval loss stays the engine's job.

Cost: a suspicious train record (NaN/Inf, zero loss) triggers the two rules that judge it at once;
otherwise all live rules run on every eval record and every `max(1, n // 100)` train records, so a
run of n steps pays for about 100 * ln(n) passes of O(n) each.
"""

from __future__ import annotations

from tunepilot.health.diagnose import RunView
from tunepilot.health.findings import Finding
from tunepilot.health.registry import run_rules
from tunepilot.health.series import finite
from tunepilot.health.settings import HealthSettings
from tunepilot.stream import EvalPoint, Event, Record, TrainStep

_IMMEDIATE = {"nan_inf", "zero_collapse"}


class LiveMonitor:
    def __init__(
        self,
        settings: HealthSettings,
        *,
        method: str = "lora",
        num_params: int | None = None,
        planned_steps: int | None = None,
        learning_rate: float | None = None,
    ):
        self.settings = settings
        self.meta = {
            "method": method,
            "num_params": num_params,
            "planned_steps": planned_steps,
            "learning_rate": learning_rate,
            "config": {},
        }
        self.records: list[Record] = []
        self.stop_event: Event | None = None
        self._since_pass = 0
        self._alerted: set[tuple[str, str | None, str]] = set()  # (code, verdict, severity) alerted

    def observe(self, record: Record) -> list[Event]:
        """Take one record; return the new alert or stop events to write to the stream."""
        if not self.settings.enabled or self.stop_event is not None or isinstance(record, Event):
            return []
        self.records.append(record)
        only = self._rules_due(record)
        if only is not None and not only:
            return []
        view = RunView.build(self.records, self.settings, **self.meta)
        findings = run_rules(view, live=True, only=only)
        return self._events(findings, record.step)

    def _rules_due(self, record: Record) -> set[str] | None:
        """None: all live rules; a set: only those; empty: nothing due for this record."""
        skip_lr = set() if self.meta["learning_rate"] else {"lr_range"}  # logged LR is still warming up
        if isinstance(record, EvalPoint):
            return self._all_but(skip_lr)
        assert isinstance(record, TrainStep)
        if record.loss is None:
            return set()
        suspicious = (
            not finite(record.loss)
            or record.loss <= 1e-12
            or (record.grad_norm is not None and not finite(record.grad_norm))
        )
        self._since_pass += 1
        n = sum(isinstance(r, TrainStep) for r in self.records)
        if self._since_pass >= max(1, n // 100):
            self._since_pass = 0
            return self._all_but(skip_lr)
        return set(_IMMEDIATE) if suspicious else set()

    @staticmethod
    def _all_but(skip: set[str]) -> set[str] | None:
        if not skip:
            return None
        from tunepilot.health.registry import RULES

        return {code for code, r in RULES.items() if r.live and code not in skip}

    def _events(self, findings: list[Finding], step: int) -> list[Event]:
        events = []
        for finding in findings:
            if finding.stop:
                message = f"stopped by the health monitor: {finding.message}"
                self.stop_event = Event(
                    step, "health.stop", message, "error", data={"rule": finding.code, **_payload(finding)}
                )
                return [self.stop_event]
            if finding.severity == "info" or not self._is_new(finding):
                continue
            events.append(
                Event(step, f"health.{finding.code}", finding.message, finding.severity, data=_payload(finding))
            )
        return events

    def _is_new(self, finding: Finding) -> bool:
        """Alert once per rule and level: again only when it escalates (a first spike is a warning, many
        spikes make the run unstable). Values move every step; the condition does not."""
        key = (finding.code, finding.verdict, finding.severity)
        if key in self._alerted:
            return False
        self._alerted.add(key)
        return True


def _payload(finding: Finding) -> dict:
    data = finding.to_dict()
    return {k: data[k] for k in ("evidence", "steps", "verdict", "changes") if data.get(k)}
