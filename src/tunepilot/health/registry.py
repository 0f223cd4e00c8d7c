"""The rule registry: a rule is a pure function `(view) -> list[Finding]` plus one decorator line.

`live=False` marks rules that only make sense for a finished run (too few points, no eval data,
underfitting, stalled): the live monitor skips them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunepilot.health.findings import Finding
from tunepilot.health.series import RunView
from tunepilot.registry import register_once

RuleFn = Callable[[RunView], list[Finding]]


@dataclass(frozen=True)
class Rule:
    code: str
    fn: RuleFn
    live: bool
    doc: str


RULES: dict[str, Rule] = {}


def rule(code: str, *, live: bool = True) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        register_once(RULES, code, Rule(code, fn, live, (fn.__doc__ or "").strip().split("\n")[0]), "health rule")
        return fn

    return register


def run_rules(view: RunView, *, live: bool = False, only: set[str] | None = None) -> list[Finding]:
    import tunepilot.health.rules  # noqa: F401  (registers the built-in rules; imported here to avoid a cycle)

    findings: list[Finding] = []
    for r in RULES.values():
        if (live and not r.live) or (only is not None and r.code not in only):
            continue
        findings.extend(r.fn(view))
    return findings
