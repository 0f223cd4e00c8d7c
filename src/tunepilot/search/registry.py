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


def _replay(spec, base: RunConfig | None, sweep_dir: Path):
    from tunepilot.engines.replay import ReplayEngine

    opts = spec.engine.options
    if "curves" not in opts:
        raise UserError("engine.curves: the replay engine needs `curves: PATH` (a JSONL of learning curves)")
    _no_options(spec, {"curves", "curve", "slots", "columns", "advance_delay_s", "faults"})
    engine = ReplayEngine(**opts)
    problems = engine.check_space(list(spec.space))
    if problems:
        raise UserError(f"space: {len(problems)} key(s) the replay engine cannot map", problems=problems)
    return engine


def _standard(spec, base: RunConfig, sweep_dir: Path):
    from tunepilot.engines.standard import StandardEngine

    _no_options(spec, set())
    # the engine reports this metric at each fraction: eval_loss, or a task metric of its evaluator
    return StandardEngine(objective=spec.objective.metric or "eval_loss")


def _packed(spec, base: RunConfig, sweep_dir: Path):
    from tunepilot.engines.packed.engine import PackedEngine

    opts = spec.engine.options
    _no_options(spec, {"slots", "chunk_rows", "compile"})
    return PackedEngine(base, **opts)


def _no_options(spec, allowed: set[str]) -> None:
    unknown = sorted(set(spec.engine.options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise UserError(f"engine: unknown {spec.engine.name} option(s) {', '.join(unknown)}; known: {known}")


ENGINES: dict[str, EngineEntry] = {
    "replay": EngineEntry(_replay, config_keys=False, needs_base=False),
    "standard": EngineEntry(_standard),
    "packed": EngineEntry(_packed),
}


def build_engine(spec, base: RunConfig | None, sweep_dir: Path):
    entry = ENGINES[spec.engine.name]
    if entry.needs_base and base is None:
        raise UserError(f"base: the {spec.engine.name} engine trains a config; give `base: train.yaml`")
    return entry.factory(spec, base, sweep_dir)


def engine_gpus(base: RunConfig | None) -> float:
    """GPUs a training engine holds (for GPU-hours): one CUDA device, or none on CPU."""
    if base is None or base.train.device == "cpu":
        return 0.0
    import torch

    return 1.0 if torch.cuda.is_available() and base.train.device in ("auto", "cuda") else 0.0
