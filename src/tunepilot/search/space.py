"""The search space as Optuna distributions, and sampled params as config updates.

Params are named by flat config keys (learning_rate, lora_rank, ...), plus derived keys that are
not config keys: `lora_alpha_multiplier` sets lora_alpha = multiplier x lora_rank (the alpha/rank
ratio is what LoRA's update scale depends on, so searching it decouples scale from rank).
A trial may also carry `overrides` (user attr): config values that are not searched but were
changed for that trial, e.g. the out-of-memory retry's halved micro-batch.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tunepilot.config import RunConfig, config_with
from tunepilot.errors import UserError
from tunepilot.search.spec import Range, SweepSpec


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    return {key: _distribution(dist) for key, dist in spec.space.items()}


def _distribution(dist: Range | list[Any]) -> BaseDistribution:
    if isinstance(dist, list):
        # Optuna choices must be scalars: a list of target modules is kept as "q_proj,v_proj"
        return CategoricalDistribution([",".join(c) if isinstance(c, list) else c for c in dist])
    # int when asked, or when both ends were written as integers (`{low: 1, high: 4}`)
    is_int = dist.type == "int" or (dist.type is None and isinstance(dist.low, int) and isinstance(dist.high, int))
    if is_int and not dist.log:
        return IntDistribution(int(dist.low), int(dist.high), step=int(dist.step or 1))
    if is_int:
        return IntDistribution(int(dist.low), int(dist.high), log=True)
    return FloatDistribution(dist.low, dist.high, log=dist.log, step=None if dist.log else dist.step)


def suggest_all(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> str | None:
    """Suggest every key of `space` on an asked trial (enqueued values come back fixed).

    Returns why it failed (an enqueued value outside its distribution, a NaN) or None: the trial
    exists by then, so the loop can record it as failed instead of crashing.
    """
    try:
        for key, dist in space.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    except ValueError as e:
        return f"bad parameter value: {e}"
    return None


def config_updates(params: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat config keys for a trial: params with derived keys resolved, then per-trial overrides."""
    updates = {k: v for k, v in params.items() if k != "lora_alpha_multiplier"}
    if "lora_alpha_multiplier" in params:
        rank = params.get("lora_rank")
        if rank is None:
            raise UserError("space.lora_alpha_multiplier: needs lora_rank in the space (or use lora_alpha)")
        updates["lora_alpha"] = float(params["lora_alpha_multiplier"]) * float(rank)
    updates.update(overrides or {})
    return updates


def trial_config(base: RunConfig, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """The base config with a trial's params applied, validated like a file."""
    return config_with(base, config_updates(params, overrides))


def check_space(spec: SweepSpec, base: RunConfig | None) -> None:
    """Build the config at both ends of every range (and every choice) so a bad value fails now."""
    if base is None:
        return
    problems = []
    if "lora_alpha_multiplier" in spec.space and "lora_rank" not in spec.space:
        # config_updates needs the trial's rank: without it every trial would fail at its start
        problems.append(
            "space.lora_alpha_multiplier: sets lora_alpha = multiplier x lora_rank, so lora_rank must be "
            "searched too; add lora_rank to the space (a list of one rank is fine), or search lora_alpha"
        )
    for key, dist in spec.space.items():
        values = dist if isinstance(dist, list) else [dist.low, dist.high]
        for value in values:
            params = {key: value}
            if key == "lora_alpha_multiplier":
                params["lora_rank"] = base.method.lora_rank
            try:
                trial_config(base, params)
            except UserError as e:
                problems.extend(f"space.{key}: {value!r} gives an invalid config ({p})" for p in e.problems)
    if problems:
        raise UserError(f"space: {len(problems)} value(s) the base config rejects", problems=problems)
