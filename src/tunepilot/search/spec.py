"""The sweep file: a base config, a search space, an objective, a strategy, a budget and an engine.

    base: train.yaml            # or an inline tunepilot train config (validated by tunepilot.config)
    space:
      learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}
      lora_rank: [8, 16, 32]
      lora_alpha_multiplier: [1, 2]   # lora_alpha = multiplier x rank
    objective: {metric: eval_loss, direction: minimize}
    sampler: tpe                      # tpe | random | grid | gp, or {name: tpe, seed: 0}
    pruner: median                    # median | percentile | hyperband | successive_halving | envelope | gain | none
    protocol: bayes                   # bayes | staged | ... (tunepilot.search.protocols)
    budget: {n_trials: 20, seconds: 3600, gpu_hours: 2, price_per_gpu_hour: 2.5}
    engine: standard                  # standard | replay | packed, or {name: replay, curves: PATH}

Every mistake is reported at once, each with its key path (`space.lora_rank: ...`), as a UserError
(exit 2). The base config is resolved relative to the sweep file.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunepilot.config import (
    RunConfig,
    _flat_index,
    build_config,
    load_config,
    merge_raw,
    parse_overrides,
    read_yaml,
)
from tunepilot.errors import ExitCode, UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    low: int | float = Field(..., description="Lowest value.")
    high: int | float = Field(..., description="Highest value.")
    log: bool = Field(False, description="Sample on a log scale (learning rates, weight decay).")
    step: float | None = Field(None, gt=0, description="Quantisation step; int ranges default to 1.")
    type: Literal["float", "int"] | None = Field(None, description="Default: int when low and high are ints.")

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low ({self.low}) and high ({self.high}) must be finite numbers")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


Choices = list[Any]


class Objective(_Strict):
    metric: str | None = Field(None, description="eval_loss (default for training engines) or a task metric.")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize for losses, maximize for anything else."
    )

    def resolved(self, default_metric: str) -> tuple[str, str]:
        metric = self.metric or default_metric
        direction = self.direction or ("minimize" if "loss" in metric else "maximize")
        return metric, direction


class Named(_Strict):
    """A pluggable part chosen by name, with its options (`{name: tpe, seed: 0, n_startup_trials: 5}`)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Budget(_Strict):
    n_trials: int | None = Field(20, gt=0, description="Stop after this many finished trials.")
    seconds: float | None = Field(None, gt=0, description="Wall-clock budget of the sweep.")
    gpu_hours: float | None = Field(None, gt=0, description="Accelerator-hours budget (all trials together).")
    train_steps: int | None = Field(None, gt=0, description="Training-steps budget (all trials together).")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="Money per GPU-hour; adds cost columns.")


class SweepSpec(_Strict):
    base: str | dict[str, Any] | None = Field(None, description="Base train config: a path or inline keys.")
    space: dict[str, Range | Choices] = Field(default_factory=dict, description="Hyperparameters to search.")
    objective: Objective = Field(default_factory=Objective)
    sampler: Named = Field(default_factory=lambda: Named(name="tpe"))
    pruner: Named = Field(default_factory=lambda: Named(name="median"))
    protocol: Named = Field(default_factory=lambda: Named(name="bayes"))
    budget: Budget = Field(default_factory=Budget)
    engine: Named = Field(default_factory=lambda: Named(name="standard"))
    storage: str | None = Field(None, description="Optuna RDB URL; default sqlite:///<sweep dir>/study.db.")
    study_name: str | None = Field(None, description="Default: the sweep file's name.")
    output_dir: str | None = Field(None, description="Sweep directory; default sweeps/<sweep file name>.")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="Trials to run first (params).")
    skip_duplicates: bool = Field(
        True,
        description="Reuse the result of a configuration already run instead of training it again (search.dedupe).",
    )
    report_every: float = Field(
        0.05, gt=0, le=0.5, description="Pruning grid: report to the pruner every this share of a schedule."
    )
    eval_points: int = Field(
        10, gt=0, le=100, description="Evaluations per trial, evenly spaced over its own schedule (engines that train)."
    )

    @field_validator("sampler", "pruner", "protocol", "engine", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: Named) -> Named:
        return _known(v, ("tpe", "random", "grid", "gp"))

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: Named) -> Named:
        return _known(v, ("median", "percentile", "hyperband", "successive_halving", "envelope", "gain", "none"))

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: Named) -> Named:
        from tunepilot.search.protocols import PROTOCOLS

        return _known(v, tuple(PROTOCOLS))

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: Named) -> Named:
        from tunepilot.search.registry import ENGINES

        return _known(v, tuple(ENGINES))


def _known(v: Named, names: tuple[str, ...]) -> Named:
    if v.name not in names:
        raise ValueError(f"name {v.name!r} is not one of {', '.join(names)}")
    return v


# Search keys that are not config keys: mapped onto config keys by tunepilot.search.space.
DERIVED_KEYS = {"lora_alpha_multiplier"}


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, RunConfig | None]:
    """Read and check a sweep file; returns the spec and its resolved base config (None if absent).

    `overrides` (`--set key=value`) apply to the base config, after the file, as for `tunepilot train`.
    """
    path = Path(path)
    raw = read_yaml(path)
    spec = parse_sweep(raw, source=str(path))
    base = resolve_base(spec, path.parent, str(path), overrides or [])
    return spec, base


def parse_sweep(raw: dict[str, Any], source: str = "sweep") -> SweepSpec:
    problems: list[str] = []
    spec = None
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        problems.extend(_format(e, raw))
    problems.extend(_space_problems(raw))
    if problems:
        raise UserError(f"{source}: {len(problems)} problem(s) in the sweep file", ExitCode.USAGE, problems)
    return spec


def _format(e: ValidationError, raw: dict[str, Any]) -> list[str]:
    out = []
    for err in e.errors():
        loc = list(err["loc"])
        if loc[:1] == ["space"] and len(loc) >= 3:
            message = _space_error(loc, err, raw.get("space") or {})
            if message:
                out.append(message)
            continue
        out.append(f"{'.'.join(str(p) for p in loc)}: {_message(err)}")
    return sorted(set(out))


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    return f"{err['input']!r} is invalid ({err['msg']})"


def _space_error(loc: list[Any], err: dict[str, Any], space: dict[str, Any]) -> str | None:
    """A space entry is a range (mapping) or choices (list): report the branch the user wrote, once."""
    key, branch, rest = loc[1], str(loc[2]), loc[3:]
    written = space.get(key)
    if not isinstance(written, (dict, list)):
        return f"space.{key}: {written!r} is neither a range {{low, high[, log, step]}} nor a list of choices"
    if ("Range" in branch) != isinstance(written, dict):
        return None
    return f"{'.'.join(str(p) for p in ['space', key, *rest])}: {_message(err)}"


def _space_problems(raw: dict[str, Any]) -> list[str]:
    """Key checks on the file as written, so they come with the type errors, not after them."""
    from tunepilot.search.registry import ENGINES

    engine = raw.get("engine")
    name = engine.get("name") if isinstance(engine, dict) else (engine or "standard")
    entry = ENGINES.get(name) if isinstance(name, str) else None
    check_keys = entry.config_keys if entry is not None else isinstance(name, str)  # a bad engine: its own error
    space = raw.get("space") if isinstance(raw.get("space"), dict) else {}
    index, problems = _flat_index(), []
    for key, dist in space.items():
        if check_keys and key not in index and key not in DERIVED_KEYS:
            guess = difflib.get_close_matches(key, [*index, *DERIVED_KEYS], n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            problems.append(f"space.{key}: unknown hyperparameter{hint}")
        if isinstance(dist, list) and not dist:
            problems.append(f"space.{key}: needs at least one choice")
        if (
            isinstance(dist, dict)
            and dist.get("type") == "int"
            and not all(isinstance(dist.get(k), int) for k in ("low", "high"))
        ):
            problems.append(f"space.{key}: an int range needs integer low and high")
        problems.extend(_at_least_one(key, dist))
    for i, params in enumerate(raw.get("enqueue") or []):
        for key, value in params.items() if isinstance(params, dict) else []:
            if key not in space:
                problems.append(f"enqueue.{i}.{key}: not in space; enqueued params must be searched keys")
            elif not _in_space(value, space[key]):
                problems.append(
                    f"enqueue.{i}.{key}: {value!r} is outside space.{key} ({_describe(space[key])}); "
                    "widen the space or change the enqueued value"
                )
    return problems


# Keys where a value below 1 changes meaning (max_steps <= 0: "use num_train_epochs instead").
AT_LEAST_ONE = ("max_steps",)


def _at_least_one(key: str, dist: Any) -> list[str]:
    if key not in AT_LEAST_ONE:
        return []
    values = dist if isinstance(dist, list) else [dist.get("low")] if isinstance(dist, dict) else []
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1 for v in values):
        return [
            f"space.{key}: reaches below 1, where {key} means 'train by epochs'; search values >= 1 "
            "(or search num_train_epochs)"
        ]
    return []


def _in_space(value: Any, dist: Any) -> bool:
    if isinstance(dist, list):
        joined = [",".join(c) if isinstance(c, list) else c for c in dist]
        return value in dist or value in joined
    low, high = (_number(dist.get(k)) for k in ("low", "high")) if isinstance(dist, dict) else (None, None)
    if low is None or high is None:
        return True  # a malformed entry has its own error
    number = _number(value)
    return number is not None and low <= number <= high


def _number(v: Any) -> float | None:
    """A YAML number (PyYAML reads `1e-5` without a dot as a string, which pydantic accepts too)."""
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _describe(dist: Any) -> str:
    if isinstance(dist, list):
        return "choices " + ", ".join(repr(c) for c in dist)
    return f"{dist.get('low')!r} to {dist.get('high')!r}"


def resolve_base(spec: SweepSpec, root: Path, source: str, overrides: list[str] | None = None) -> RunConfig | None:
    """The base train config, validated like `tunepilot train` would; problems prefixed with `base`."""
    if spec.base is None:
        if overrides:
            raise UserError(f"{source}: --set needs a base config in the sweep file to apply to")
        return None
    try:
        if isinstance(spec.base, str):
            base_path = Path(spec.base) if Path(spec.base).is_absolute() else root / spec.base
            config, _ = load_config(base_path, overrides)
        else:
            raw = merge_raw(spec.base, parse_overrides(overrides or []))
            config, _ = build_config(raw, source=f"{source}: base", root=root.resolve())
    except UserError as e:
        raise UserError(f"{source}: base: {e.message}", e.code, [f"base.{p}" for p in e.problems]) from e
    return config
