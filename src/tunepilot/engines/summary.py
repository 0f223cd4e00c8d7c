"""`summary.json`: one typed schema for every run, standard or packed, alone or in a sweep.

Failures are a closed set (`FailureKind`), never matched by their text: the sweep retries an
out-of-memory trial, counts an interrupted one as not spent, and reports the rest by kind.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tunepilot.errors import UserError

SUMMARY_VERSION = 2


class FailureKind(str, Enum):
    OOM = "oom"  # out of accelerator memory; a sweep retries with half the micro-batch
    HEALTH_STOP = "health_stop"  # the live monitor stopped it (divergence, collapse, NaN by rule)
    NON_FINITE = "non_finite"  # a loss or objective became NaN/Inf
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, a killed worker: resumable, not counted as spent
    ERROR = "error"  # anything else: a bad trial config, a crash


Status = Literal["completed", "early_stopped", "stopped", "pruned", "failed", "interrupted"]


class StopReason(BaseModel):
    code: str
    message: str
    step: int


class Objective(BaseModel):
    name: str
    direction: Literal["minimize", "maximize"]
    best: float | None = None
    step: int | None = None


class RunSummary(BaseModel):
    """What a run ended as. `ok` is False for a stopped or failed run (exit code 1)."""

    model_config = ConfigDict(extra="forbid")

    version: int = SUMMARY_VERSION
    engine: str
    status: Status
    ok: bool
    failure: FailureKind | None = None
    stop_reason: StopReason | None = None
    trial: int | None = None  # the study's trial number, in a sweep
    params: dict[str, Any] = {}  # the sampled hyperparameters, in a sweep
    steps: int
    planned_steps: int
    tokens: int
    seconds: float  # this run's share of the wall time (a packed trial: its share of the pack's)
    train_seconds: float
    tokens_per_second: float
    objective: Objective
    best_eval_loss: float | None = None
    best_step: int | None = None
    restored_best: bool = False
    peak_memory_mb: float | None = None
    device: str
    processes: int = 1  # data-parallel processes the run trained on (torchrun / accelerate ranks)
    parameters: dict[str, int] = {}
    plan: dict[str, Any] = {}
    data: dict[str, Any] = {}
    run_dir: str | None = None
    adapter: str | None = None  # adapter/ (LoRA) or model/ (full fine-tuning); None if none was saved
    evals: list[tuple[int, float]] = []  # (step, objective value) of every evaluation

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def read_summary(path: str | Path) -> RunSummary:
    """Read a run's summary.json; a file of another version or shape is a clear error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return RunSummary.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{path}: not a tunepilot summary.json of version {SUMMARY_VERSION} ({first})") from e
