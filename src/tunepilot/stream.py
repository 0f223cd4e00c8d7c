"""The one metrics stream: typed records, and their JSONL reader and writer.

Every run, live or finished, ours or foreign, becomes a list of these records. Engines write them,
log readers (`tunepilot.logs`) produce them, and the monitor, the pruner, `diagnose` and `report`
read them. Fields a source does not know are None.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tunepilot.errors import UserError


@dataclass
class TrainStep:
    """One optimizer step."""

    step: int
    loss: float | None
    lr: float | None = None
    grad_norm: float | None = None
    epoch: float | None = None
    tokens: int | None = None  # trained (unmasked) tokens seen so far, cumulative
    input_tokens: int | None = None  # all tokens processed (prompts too, padding not), cumulative
    seconds: float | None = None  # wall-clock seconds since the run started (resumes add up)
    memory_mb: float | None = None  # peak accelerator (or process) memory so far
    kind: Literal["train"] = "train"


@dataclass
class EvalPoint:
    """One evaluation: eval loss and any task metrics."""

    step: int
    eval_loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    epoch: float | None = None
    seconds: float | None = None
    kind: Literal["eval"] = "eval"


@dataclass
class Event:
    """Something that happened: a health alert, a stop, a checkpoint, a resume."""

    step: int
    code: str
    message: str
    severity: Literal["info", "warning", "error"] = "info"
    data: dict[str, Any] = field(default_factory=dict)
    kind: Literal["event"] = "event"


def stop_record(reason: Event) -> Event:
    """The `stop` event an engine writes when `reason` (a health stop, early stopping...) ends its run."""
    return Event(
        step=reason.step,
        code="stop",
        severity=reason.severity,
        message=f"run stopped: {reason.message}",
        data={"reason": reason.code},
    )


Record = TrainStep | EvalPoint | Event
_TYPES: dict[str, type] = {"train": TrainStep, "eval": EvalPoint, "event": Event}


def to_dict(record: Record) -> dict[str, Any]:
    """A JSON-safe dict: NaN/Inf become the strings "nan"/"inf" so the line stays valid JSON."""
    return {k: _json_number(v) for k, v in asdict(record).items()}


def from_dict(d: dict[str, Any]) -> Record:
    cls = _TYPES.get(d.get("kind", "train"))
    if cls is None:
        raise ValueError(f"unknown record kind {d.get('kind')!r}")
    names = {f.name for f in fields(cls)}
    kwargs = {k: _from_json_number(v) for k, v in d.items() if k in names}
    return cls(**kwargs)


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_number(x) for k, x in v.items()}
    return v


def _from_json_number(v: Any) -> Any:
    if v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, dict):
        return {k: _from_json_number(x) for k, x in v.items()}
    return v


class MetricsWriter:
    """Appends records to `metrics.jsonl`, one flushed and fsynced line each.

    On resume, `truncate_after(step)` drops every record past the checkpoint's step, so a stream
    never holds a step twice or a step the resumed run will redo.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: Record) -> None:
        self._f.write(json.dumps(to_dict(record)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def truncate_after(self, step: int) -> None:
        self._f.close()
        kept = [r for r in read_stream(self.path) if r.step <= step] if self.path.exists() else []
        from tunepilot.io import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(to_dict(r)) + "\n" for r in kept))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_stream(path: str | Path) -> list[Record]:
    """Read a tunepilot `metrics.jsonl`. A torn last line (a kill mid-write) is ignored."""
    return list(iter_stream(path))


def iter_stream(path: str | Path) -> Iterator[Record]:
    from tunepilot.io import read_text

    path = Path(path)
    lines = read_text(path, "metrics file").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            if i == len(lines):  # torn final line from a kill: the step in flight is lost, by design
                return
            raise UserError(f"{path}:{i}: not a metrics record ({e}); is this a tunepilot metrics.jsonl?") from e


def train_steps(records: Iterable[Record]) -> list[TrainStep]:
    return [r for r in records if isinstance(r, TrainStep)]


def eval_points(records: Iterable[Record]) -> list[EvalPoint]:
    return [r for r in records if isinstance(r, EvalPoint)]


def events(records: Iterable[Record]) -> list[Event]:
    return [r for r in records if isinstance(r, Event)]
