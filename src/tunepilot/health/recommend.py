"""Turn the findings' suggested changes into a concrete config patch with before/after values.

Changes come first from the findings that support the verdict, then from the other warnings and
errors; the first suggestion for a key wins. A factor needs the run's value: when the log does not
say it, the change is reported as "x0.3 of your value" with no `after`, and left out of the patch.
"""

from __future__ import annotations

from typing import Any

from tunepilot.health.findings import SEVERITY_RANK, Change, Finding
from tunepilot.health.series import sig

_INTEGER_KEYS = {
    "lora_rank",
    "gradient_accumulation_steps",
    "max_steps",
    "early_stopping_patience",
    "logging_steps",
    "eval_steps",
}


def recommendations(findings: list[Finding], verdict: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    ordered = [f for f in findings if f.verdict == verdict]
    ordered += [f for f in findings if f.verdict != verdict and SEVERITY_RANK[f.severity] >= 1]
    ordered += [f for f in findings if f.verdict != verdict and f.severity == "info"]
    out: dict[str, dict[str, Any]] = {}
    for finding in ordered:
        for change in finding.changes:
            change = _in_run_units(change, config)
            if change.key in out:
                continue
            item = resolve(change, config.get(change.key))
            if item is not None:
                out[change.key] = {**item, "rule": finding.code}
    return list(out.values())


def _in_run_units(change: Change, config: dict[str, Any]) -> Change:
    """A run length set by max_steps ignores num_train_epochs: scale max_steps instead."""
    max_steps = config.get("max_steps")
    if change.key == "num_train_epochs" and change.factor is not None and isinstance(max_steps, int) and max_steps > 0:
        return Change("max_steps", change.reason, factor=change.factor)
    return change


def resolve(change: Change, before: Any) -> dict[str, Any] | None:
    """{key, before, after, change, reason}; None when the change would not change anything."""
    after: Any = None
    if change.value is not None:
        after, text = change.value, f"set {change.value}"
    elif change.factor is not None:
        text = f"x{sig(change.factor, 2)}"
        if isinstance(before, (int, float)) and not isinstance(before, bool) and before > 0:
            after = before * change.factor
    else:
        after, text = before, ""
    if change.minimum is not None and (after is None or after < change.minimum):
        after, text = change.minimum, f"at least {change.minimum}"
    if change.maximum is not None and (after is None or after > change.maximum):
        after, text = change.maximum, f"at most {change.maximum}"
    if isinstance(after, float):
        after = round(after) if change.key in _INTEGER_KEYS else sig(after, 2)
        if isinstance(before, int) and not isinstance(before, bool) and float(after).is_integer():
            after = int(after)
    if after is not None and before is not None and after == before:
        return None
    return {"key": change.key, "before": before, "after": after, "change": text, "reason": change.reason}


def patch(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The changes with a concrete value: a mapping for a config merge or `train --set`."""
    return {r["key"]: r["after"] for r in recs if r["after"] is not None}


def set_args(recs: list[dict[str, Any]]) -> str:
    return " ".join(f"--set {k}={_yaml_scalar(v)}" for k, v in patch(recs).items())


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
