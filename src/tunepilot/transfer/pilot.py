"""Pilot runs: check a transferred learning rate on the target with a few short runs before the real one.

    grid     = transferred LR x pilot_factors (default 0.5, 1, 2: conservative, one octave each way)
    a pilot  = the target's own schedule compressed to pilot_fraction of the planned steps (warmup
               ratio and decay kept), evaluated at the same fractions of its schedule
    stopping = the standard engine's live health monitor ends a diverging pilot early (NaN,
               divergence), so a bad LR costs a few steps, not a pilot
    winner   = lowest eval loss at the largest fraction every surviving pilot reached, so losses
               are compared at equal progress

Pilots run through the engine interface (`tunepilot.engines.base.Engine`); the standard engine keeps
the base model loaded between LoRA pilots. The cost of all pilots is reported against the full run's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tunepilot.config import RunConfig, config_with
from tunepilot.engines.base import Engine, Outcome, Report, TrialSpec
from tunepilot.transfer.settings import TransferSettings

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Pilot:
    number: int
    factor: float
    learning_rate: float
    reports: dict[float, float] = field(default_factory=dict)  # fraction -> eval loss
    state: str = "running"
    reason: str | None = None
    steps: int = 0
    seconds: float = 0.0


@dataclass
class PilotResult:
    pilots: list[Pilot]
    planned_steps: int
    pilot_steps: int
    compared_at: float | None
    winner: Pilot | None
    config: RunConfig
    note: str

    def to_dict(self) -> dict[str, Any]:
        done = sum(p.steps for p in self.pilots)
        seconds = sum(p.seconds for p in self.pilots)
        per_step = seconds / done if done else None
        return {
            "pilots": [asdict(p) for p in self.pilots],
            "planned_steps": self.planned_steps,
            "steps_per_pilot": self.pilot_steps,
            "compared_at_fraction": self.compared_at,
            "winner_learning_rate": self.winner.learning_rate if self.winner else None,
            "note": self.note,
            "cost": {
                "pilot_steps": done,
                "pilot_seconds": round(seconds, 2),
                "share_of_full_run": round(done / self.planned_steps, 4),
                "full_run_seconds_estimate": round(per_step * self.planned_steps, 1) if per_step else None,
            },
        }


def planned_steps(config: RunConfig) -> int:
    """The full run's optimizer steps, from the record count of the training data (as `train` plans;
    each dataset of several counted, as `iter_split` reads them)."""
    from tunepilot.data.parse import ParseState, iter_split
    from tunepilot.engines.plan import make_plan

    if config.train.max_steps > 0:
        return config.train.max_steps
    if config.data.phase_steps:
        return sum(config.data.phase_steps)
    n = sum(1 for _ in iter_split(config.data, "train", ParseState(), config.data.max_samples))
    if not config.data.eval:
        n = int(n * (1 - max(config.data.val_size, 0.05)))
    return make_plan(config.train, max(n, 1)).total_steps


def pilot_configs(config: RunConfig, settings: TransferSettings, root: Path) -> tuple[list[TrialSpec], int, int]:
    total = planned_steps(config)
    steps = max(4, math.ceil(settings.pilot_fraction * total))
    updates: dict[str, Any] = {
        "max_steps": steps,
        "eval_steps": None,
        "save_steps": steps + 1,
        "early_stopping_patience": None,
        "load_best_model_at_end": False,
    }
    if not config.data.eval and config.data.val_size == 0:
        updates["val_size"] = 0.05  # pilots are judged on held-out loss
    specs = []
    for i, factor in enumerate(settings.pilot_factors):
        lr = float(f"{config.train.learning_rate * factor:.3g}")
        cfg = config_with(config, {**updates, "learning_rate": lr, "output_dir": str(root / f"pilot-{i}")})
        specs.append(TrialSpec(i, {"learning_rate": lr, "factor": factor}, cfg, root / f"pilot-{i}", FRACTIONS))
    return specs, total, steps


def run_pilot(engine: Engine, spec: TrialSpec) -> Pilot:
    pilot = Pilot(spec.number, spec.params["factor"], spec.params["learning_rate"])
    engine.start(spec)
    while True:
        for item in engine.advance():
            if isinstance(item, Report) and item.value is not None:
                pilot.reports[round(item.fraction, 4)] = item.value
            elif isinstance(item, Outcome):
                pilot.state, pilot.reason = item.state, item.reason
                pilot.steps, pilot.seconds = item.steps, item.seconds
                return pilot


def choose_winner(pilots: list[Pilot]) -> tuple[Pilot | None, float | None]:
    alive = [p for p in pilots if p.state == "complete" and p.reports]
    if not alive:
        return None, None
    common = set.intersection(*(set(p.reports) for p in alive))
    if not common:
        return None, None
    at = max(common)
    return min(alive, key=lambda p: p.reports[at]), at


def _engine_for(config: RunConfig) -> Engine:
    """In this process; or, for a target planned on N GPUs (`train.nproc`), as N processes each."""
    if config.train.nproc > 1:
        from tunepilot.engines.launched import LaunchedEngine

        return LaunchedEngine(objective="eval_loss")
    from tunepilot.engines.standard import StandardEngine

    return StandardEngine(objective="eval_loss")


def run_pilots(
    config: RunConfig, settings: TransferSettings, root: str | Path, engine: Engine | None = None
) -> PilotResult:
    specs, total, steps = pilot_configs(config, settings, Path(root))
    engine = engine or _engine_for(config)
    try:
        pilots = [run_pilot(engine, spec) for spec in specs]
    finally:
        engine.close()
    winner, at = choose_winner(pilots)
    if winner is None:
        note = "no pilot finished with an eval loss: the transferred LR is kept; lower it and re-run"
        return PilotResult(pilots, total, steps, None, None, config, note)
    note = (
        f"winner x{winner.factor:g} (LR {winner.learning_rate:.3g}): lowest eval loss at {at:.0%} of the pilot schedule"
    )
    if winner.factor == max(settings.pilot_factors) or winner.factor == min(settings.pilot_factors):
        note += "; it is at the edge of the grid, so the best LR may lie beyond it"
    return PilotResult(
        pilots, total, steps, at, winner, config_with(config, {"learning_rate": winner.learning_rate}), note
    )


def render_pilots(console: Console, d: dict[str, Any]) -> None:
    console.print(
        f"[bold]pilots[/]: {len(d['pilots'])} x {d['steps_per_pilot']} steps (planned run: {d['planned_steps']} steps)"
    )
    for p in d["pilots"]:
        losses = ", ".join(f"{f:.0%}: {v:.4f}" for f, v in sorted(p["reports"].items()))
        extra = f" ({escape(p['reason'])})" if p["reason"] else ""
        console.print(f"  x{p['factor']:g} LR {p['learning_rate']:.3g}: {p['state']}{extra}  " + escape(f"[{losses}]"))
    cost = d["cost"]
    console.print(f"  {escape(d['note'])}")
    console.print(
        f"  cost: {cost['pilot_steps']} steps = {cost['share_of_full_run']:.1%} of the full run"
        + (
            f" (~{cost['pilot_seconds']:.0f} s of ~{cost['full_run_seconds_estimate']:.0f} s)"
            if cost["full_run_seconds_estimate"]
            else ""
        )
    )
