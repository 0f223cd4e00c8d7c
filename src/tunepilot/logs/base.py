"""A run's log as the one metrics stream plus what is known about the run, and the reader registry.

A reader is one module with a `detect(path) -> Path | None` (the file it would read, or None) and a
`read(file) -> RunLog`, registered with one `register_log_reader(...)` line. `read_log(path)` tries the
readers in registration order, so a directory holding several logs is read by the first that claims it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError
from tunepilot.registry import register_once
from tunepilot.stream import EvalPoint, Record, TrainStep


@dataclass
class RunLog:
    records: list[Record]
    source: str  # the reader's name: tunepilot, hf_trainer_state, llamafactory
    path: Path  # the file that was read
    method: str | None = None  # lora or full, when known
    learning_rate: float | None = None  # configured peak learning rate, when known
    lora_rank: int | None = None
    lora_alpha: float | None = None
    num_params: int | None = None  # base model parameters, when known or guessed from its name
    model: str | None = None
    planned_steps: int | None = None  # total optimizer steps the run was set up for
    config: dict[str, Any] = field(default_factory=dict)  # known settings under tunepilot's flat keys
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. best_metric, final eval loss
    notes: list[str] = field(default_factory=list)  # what the reader skipped or fixed

    @property
    def train_steps(self) -> list[TrainStep]:
        return [r for r in self.records if isinstance(r, TrainStep)]

    @property
    def eval_points(self) -> list[EvalPoint]:
        return [r for r in self.records if isinstance(r, EvalPoint)]

    def meta(self) -> dict[str, Any]:
        """JSON-safe description of the run, for reports and the --json envelope."""
        return {
            "path": str(self.path),
            "source": self.source,
            "method": self.method,
            "learning_rate": self.learning_rate,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "num_params": self.num_params,
            "model": self.model,
            "planned_steps": self.planned_steps,
            "train_points": len(self.train_steps),
            "eval_points": len(self.eval_points),
            "config": self.config,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Reader:
    name: str
    detect: Callable[[Path], Path | None]
    read: Callable[[Path], RunLog]


READERS: dict[str, Reader] = {}

EXPECTED = (
    "a tunepilot metrics.jsonl, an HF Trainer trainer_state.json (or a run directory or a directory "
    "of checkpoint-* folders holding one), or a LLaMA-Factory trainer_log.jsonl"
)


def register_log_reader(name: str, detect: Callable[[Path], Path | None], read: Callable[[Path], RunLog]) -> None:
    register_once(READERS, name, Reader(name, detect, read), "log reader")


def read_log(path: str | Path, fmt: str | None = None) -> RunLog:
    """Read any supported log into a RunLog; UserError (exit 2) naming the file if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; expected {EXPECTED}")
    readers = list(READERS.values())
    if fmt is not None:
        if fmt not in READERS:
            raise UserError(f"--format {fmt!r}: unknown log format; use one of {', '.join(READERS)}")
        readers = [READERS[fmt]]
    for reader in readers:
        file = reader.detect(path)
        if file is not None:
            return reader.read(file)
    raise UserError(f"{path}: not a log tunepilot can read; expected {EXPECTED}")


def sort_and_dedupe(records: list[Record]) -> tuple[list[Record], int]:
    """Records ordered by step (stable); a repeated (kind, step) keeps its last line.

    Multi-process runs often write every line twice (once per rank), and a resumed LLaMA-Factory run
    appends the steps it redoes: the last line is the one that counts. A train line and an eval line
    at the same step are both kept; they are different records.
    """
    seen: set[tuple[str, int]] = set()
    kept: list[Record] = []
    for record in reversed(sorted(records, key=lambda r: r.step)):
        key = (record.kind, record.step)
        if key in seen and record.kind != "event":
            continue
        seen.add(key)
        kept.append(record)
    kept.reverse()
    return kept, len(records) - len(kept)
