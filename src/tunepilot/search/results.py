"""A sweep's results: the leaderboard, best.yaml for `tunepilot train`, and the files in the sweep dir.

<sweep dir>/study.db          the Optuna study (default storage)
<sweep dir>/sweep.json        study name, storage (when it is the default), the sweep spec
<sweep dir>/leaderboard.json  every trial: state, value, params, reason, costs, stage
<sweep dir>/decisions.json    what the protocol decided and why
<sweep dir>/best.yaml         the best complete trial's config (when the sweep has a base config)
<sweep dir>/best.json         the best trial's number, value and params
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunepilot.config import RunConfig, dump_config
from tunepilot.io import atomic_write_json, atomic_write_text
from tunepilot.search.space import trial_config

COST_KEYS = ("seconds", "steps", "tokens", "gpu_hours", "cost")


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One leaderboard row; a pruned trial shows its last reported value and where it stopped."""
    last_step = max(t.intermediate_values) if t.intermediate_values else None
    value = (
        t.value
        if t.state == TrialState.COMPLETE
        else (t.intermediate_values[last_step] if last_step is not None else None)
    )
    row = {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": _finite(value),
        "reached_pct": 100 if t.state == TrialState.COMPLETE else last_step,
        "params": t.params,
        "stage": t.user_attrs.get("stage"),
        "reason": t.user_attrs.get("reason"),
        "failure": t.user_attrs.get("failure"),  # the kind: oom, health_stop, non_finite, interrupted, error
        "retry_of": t.user_attrs.get("retry_of"),
        "overrides": t.user_attrs.get("overrides"),
    }
    row.update({k: t.user_attrs[k] for k in COST_KEYS if k in t.user_attrs})
    return row


def leaderboard(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials best first, then pruned (by value at the furthest point), then failed."""
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}

    def key(row: dict[str, Any]) -> tuple:
        v = row["value"]
        return (order.get(row["state"], 5), -(row["reached_pct"] or 0), math.inf if v is None else sign * v)

    return sorted((trial_row(t) for t in study.get_trials(deepcopy=False)), key=key)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def write_results(sweep_dir: Path, study: optuna.Study, base: RunConfig | None) -> dict[str, Any]:
    board = leaderboard(study)
    atomic_write_json(sweep_dir / "leaderboard.json", board)
    atomic_write_json(sweep_dir / "decisions.json", study.user_attrs.get("decisions", []))
    best = best_trial(study)
    out: dict[str, Any] = {"best": None, "best_yaml": None}
    if best is None:
        return out
    out["best"] = {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "overrides": best.user_attrs.get("overrides"),
    }
    atomic_write_json(sweep_dir / "best.json", out["best"])
    if base is not None:
        config = trial_config(base, best.params, best.user_attrs.get("overrides"))
        # best.yaml trains in its own run directory, not in a trial's
        config.output.output_dir = str(sweep_dir / "best")
        atomic_write_text(sweep_dir / "best.yaml", dump_config(config))
        out["best_yaml"] = str(sweep_dir / "best.yaml")
    return out


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None
