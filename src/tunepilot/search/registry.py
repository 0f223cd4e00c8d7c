"""Engine construction for sweeps, in one registry: a new engine is one factory plus one line.

A factory takes (spec, base config, sweep dir) and returns an Engine (tunepilot.engines.base). An
entry also says which keys its search space may use: config keys (engines that train a RunConfig)
or the engine's own (the replay engine accepts what its curves file has).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepilot.config import RunConfig
from tunepilot.errors import UserError


@dataclass(frozen=True)
class EngineEntry:
    factory: Callable[[Any, RunConfig | None, Path], Any]
    config_keys: bool = True  # space keys are tunepilot config keys, checked against the base config
    needs_base: bool = True
    reports: Callable[[str], bool] | None = None  # which objective metrics it can report, known before building


def _standard_reports(metric: str) -> bool:
    from tunepilot.engines.standard import supports_task_metric

    return supports_task_metric(metric)


def _replay(spec, base: RunConfig | None, sweep_dir: Path):
    from tunepilot.engines.replay import ReplayEngine

    opts = spec.engine.options
    if "curves" not in opts:
        raise UserError("engine.curves: the replay engine needs `curves: PATH` (a JSONL of learning curves)")
    _no_options(spec, {"curves", "curve", "slots", "columns", "advance_delay_s", "faults"})
    _check_slots(opts.get("slots", 1))
    opts = {**opts, **_replay_curve(spec, opts)}
    engine = ReplayEngine(**opts)
    problems = engine.check_space(list(spec.space))
    if problems:
        raise UserError(f"space: {len(problems)} key(s) the replay engine cannot map", problems=problems)
    return engine


def _standard(spec, base: RunConfig, sweep_dir: Path):
    from tunepilot.engines.standard import StandardEngine

    _no_options(spec, set())
    # the engine reports this metric at each fraction: eval_loss, or a task metric of its evaluator
    objective = spec.objective.metric or "eval_loss"
    if base is not None and base.train.nproc > 1:  # each trial on N processes: `train --nproc N`
        from tunepilot.engines.launched import LaunchedEngine

        return LaunchedEngine(objective=objective)
    return StandardEngine(objective=objective)


def _packed(spec, base: RunConfig, sweep_dir: Path):
    from tunepilot.engines.packed.engine import PackedEngine

    opts = spec.engine.options
    _no_options(spec, {"slots", "chunk_rows", "compile"})
    if opts.get("slots", "auto") != "auto":
        _check_slots(opts["slots"], allow_auto=True)
    return PackedEngine(base, **opts)


def _check_slots(slots: Any, allow_auto: bool = False) -> None:
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        also = " or auto" if allow_auto else ""
        raise UserError(f"engine.slots: {slots!r} is not a number of slots; give a whole number >= 1{also}")


def _replay_curve(spec, opts: dict[str, Any]) -> dict[str, Any]:
    """The curve to replay is the objective's metric: an unknown one is refused, listing the curves."""
    metric, curve = spec.objective.metric, opts.get("curve")
    if metric is None:
        return {}
    names = _curve_names(Path(opts["curves"]))
    if metric not in names:
        raise UserError(
            f"objective.metric: {metric!r} is not a curve of {opts['curves']}; its curves: {', '.join(names)}"
        )
    if curve is not None and curve != metric:
        raise UserError(
            f"objective.metric {metric!r} and engine.curve {curve!r} differ; the replay engine "
            "optimises the curve it replays: make them the same or drop engine.curve"
        )
    return {"curve": metric}


def _curve_names(path: Path) -> list[str]:
    """The curve names of a learning-curves JSONL (from its first record; a bad file is refused later)."""
    import json

    from tunepilot.io import decode_utf8

    try:
        with path.open("rb") as f:
            first = f.readline()
        curves = json.loads(decode_utf8(first, path, "curves file")).get("learning_curves")
    except (OSError, ValueError, AttributeError):
        return []  # missing or malformed: the engine names the problem when it reads the file
    return list(curves) if isinstance(curves, dict) else []


def _no_options(spec, allowed: set[str]) -> None:
    unknown = sorted(set(spec.engine.options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise UserError(f"engine: unknown {spec.engine.name} option(s) {', '.join(unknown)}; known: {known}")


ENGINES: dict[str, EngineEntry] = {
    "replay": EngineEntry(_replay, config_keys=False, needs_base=False),
    "standard": EngineEntry(_standard, reports=_standard_reports),
    "packed": EngineEntry(_packed, reports=lambda metric: metric == "eval_loss"),
}


def build_engine(spec, base: RunConfig | None, sweep_dir: Path):
    """The sweep's engine, refusing an objective it cannot report (exit 2, naming one that can)."""
    entry = ENGINES[spec.engine.name]
    if entry.needs_base and base is None:
        raise UserError(f"base: the {spec.engine.name} engine trains a config; give `base: train.yaml`")
    metric = spec.objective.metric
    if metric is not None and entry.reports is not None and not entry.reports(metric):
        _refuse(spec.engine.name, metric, None)  # before the engine loads its model
    engine = entry.factory(spec, base, sweep_dir)
    if not engine.supports(metric or engine.default_metric):
        engine.close()
        _refuse(engine.name, metric or engine.default_metric, engine)
    return engine


def _refuse(name: str, metric: str, engine) -> None:
    raise UserError(f"objective.metric: the {name} engine cannot report {metric!r}; {_who_can(name, metric, engine)}")


def _who_can(name: str, metric: str, engine) -> str:
    from tunepilot.engines.standard import supports_task_metric

    if engine is not None and name == "replay":
        curves = ", ".join(engine.metrics)
        return f"it replays one curve of its file ({curves}): set engine.curve, or leave objective.metric out"
    if name != "standard" and supports_task_metric(metric):
        return f"the standard engine scores {metric} by generation at every report point: use engine: standard"
    return (
        "a training engine reports eval_loss or a task metric (exact_match, numeric_match, accuracy, "
        "token_f1, field_f1, or module:function)"
    )


def engine_gpus(base: RunConfig | None) -> float:
    """GPUs a training engine holds (for GPU-hours): one CUDA device, or none on CPU."""
    if base is None or base.train.device == "cpu":
        return 0.0
    import torch

    return 1.0 if torch.cuda.is_available() and base.train.device in ("auto", "cuda") else 0.0
