"""The replay engine: "trains" a trial by reading a recorded learning curve; no GPU, no model.

A curves file is JSONL, one fine-tuning run per line: hyperparameter columns (numbers or strings),
`total_model_steps`, and `learning_curves: {name: [[step, value], ...]}` (the format of
`shared/data/lm-tuning-curves`). Nothing about a particular file is hard-coded: the columns, their
ranges and scales, the curve names and the report points all come from the file.

A trial's params are mapped to the nearest configuration in the file, in a normalised space: each
numeric column is scaled to [0, 1] by the file's min and max, on a log scale when all its values
are positive and span at least a factor of 10 (learning rates, warmup steps); a string column
counts 0 when equal, 1 when not. Each `advance` reveals the next curve point of every active trial,
as a Report at fraction step/total_model_steps; compute is counted in the file's real training
steps. A trial ends complete after its last point, or pruned by `stop`.

Search keys map to columns by name, then by the aliases below, then through `columns:` in the
engine options; `warmup_ratio` is derived as warmup_steps / total_model_steps when absent.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepilot.engines.base import Outcome, Progress, Report, TrialSpec
from tunepilot.engines.summary import FailureKind
from tunepilot.errors import UserError
from tunepilot.io import decode_utf8

NOT_HYPERPARAMETERS = {"iteration", "total_model_steps", "learning_curves"}
# tunepilot config keys -> column names other tools use for the same knob
ALIASES = {
    "per_device_train_batch_size": ("train_batch_size", "batch_size"),
    "lora_dropout": ("dropout", "cls_drop_out", "hidden_dropout"),
    "num_train_epochs": ("epochs",),
}
FAULTS = ("exception", "nan", "oom")


@dataclass
class Run:
    """One recorded configuration."""

    index: int
    columns: dict[str, Any]
    total_steps: int
    points: list[tuple[int, float]]

    @property
    def final(self) -> float:
        return self.points[-1][1]


class CurveTable:
    """A curves file, parsed once; `nearest(params)` finds the closest recorded configuration."""

    def __init__(self, path: str | Path, curve: str | None = None):
        self.path = Path(path)
        self.runs = _read_runs(self.path, curve)
        self.curve = curve or _first_curve(self.path)
        self.columns = sorted({c for r in self.runs for c in r.columns})
        self._scale = {c: _scaler([r.columns.get(c) for r in self.runs]) for c in self.columns}

    def column_for(self, key: str, columns: dict[str, str] | None = None) -> str | None:
        if columns and key in columns:
            return columns[key] if columns[key] in self.columns else None
        for name in (key, *ALIASES.get(key, ())):
            if name in self.columns:
                return name
        return None

    def nearest(self, params: dict[str, Any], columns: dict[str, str] | None = None) -> Run:
        pairs = []
        for key, value in params.items():
            column = self.column_for(key, columns)
            if column is None:
                raise UserError(f"space.{key}: no column for it in {self.path}; columns: {', '.join(self.columns)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}={value} is not a finite number")
            pairs.append((column, value))

        def distance(run: Run) -> float:
            return sum(self._scale[c](run.columns.get(c), v) for c, v in pairs)

        return min(self.runs, key=distance)

    @property
    def best_final(self) -> float:
        return max(r.final for r in self.runs)


def _first_curve(path: Path) -> str:
    return _curve_names(path)[0]


def _curve_names(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return list(json.loads(f.readline())["learning_curves"])


def _read_runs(path: Path, curve: str | None) -> list[Run]:
    if not path.is_file():
        raise UserError(f"engine.curves: {path} not found; give the path of a learning-curves JSONL file")
    runs = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, "curves file", first_line=n)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                curves = row["learning_curves"]
                name = curve or next(iter(curves))
                points = [(int(s), float(v)) for s, v in curves[name]]
                total = int(row.get("total_model_steps") or points[-1][0])
            except (ValueError, KeyError, TypeError, StopIteration) as e:
                raise UserError(
                    f"{path}:{n}: not a learning-curve record ({e!r}); expected "
                    "learning_curves: {{name: [[step, value], ...]}}"
                ) from e
            cols = {k: v for k, v in row.items() if k not in NOT_HYPERPARAMETERS and isinstance(v, (int, float, str))}
            if "warmup_ratio" not in cols and isinstance(cols.get("warmup_steps"), (int, float)):
                cols["warmup_ratio"] = cols["warmup_steps"] / total
            if points:
                runs.append(Run(len(runs), cols, total, points))
    if not runs:
        raise UserError(f"{path}: no learning curves in the file")
    return runs


def _scaler(values: list[Any]):
    """Distance on one column, normalised to [0, 1] by the file's range (log when it spans >= 10x)."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) < len([v for v in values if v is not None]):
        return lambda a, b: 0.0 if a == b else 1.0
    lo, hi = min(nums), max(nums)
    log = lo > 0 and hi / lo >= 10
    f = math.log if log else (lambda x: x)
    span = (f(hi) - f(lo)) or 1.0

    def dist(a: Any, b: Any) -> float:
        if a is None:
            return 1.0
        b = min(max(float(b), lo), hi) if log else float(b)  # log of a value <= 0 is clipped to the range
        return ((f(float(a)) - f(b)) / span) ** 2

    return dist


@dataclass
class _Active:
    spec: TrialSpec
    run: Run
    next_point: int = 0
    started: float = 0.0

    @property
    def steps(self) -> int:
        return self.run.points[self.next_point - 1][0] if self.next_point else 0


class ReplayEngine:
    """Any number of slots; each advance reveals one curve point per active trial."""

    name = "replay"

    def __init__(
        self,
        curves: str | Path,
        curve: str | None = None,
        slots: int = 1,
        columns: dict[str, str] | None = None,
        advance_delay_s: float = 0.0,
        faults: dict[int, str] | None = None,
        table: CurveTable | None = None,
    ):
        self.table = table or CurveTable(curves, curve)
        self.default_metric = self.table.curve
        self.seconds = {"advance": 0.0}
        self.columns = columns or {}
        self.advance_delay_s = advance_delay_s  # simulated training time per advance (demos, kill tests)
        self.faults = {int(k): v for k, v in (faults or {}).items()}  # trial number -> injected failure
        self._slots = slots
        self._active: dict[int, _Active] = {}

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def active(self) -> list[int]:
        return list(self._active)

    def supports(self, metric: str) -> bool:
        """The one curve this engine replays (`curve:`, default the file's first)."""
        return metric == self.table.curve

    @property
    def metrics(self) -> list[str]:
        """Every curve the file holds (each one a `curve:` choice)."""
        return _curve_names(self.table.path)

    def check_space(self, keys: list[str]) -> list[str]:
        return [
            f"space.{k}: no column for it in {self.table.path}; columns: {', '.join(self.table.columns)}"
            for k in keys
            if self.table.column_for(k, self.columns) is None
        ]

    def config_key(self, spec: TrialSpec) -> str:
        """What this engine would train for `spec`: the recorded run it maps to (see search.dedupe)."""
        return f"replay:{self._resolve(spec).index}"

    def _resolve(self, spec: TrialSpec) -> Run:
        # a trial's config overrides (the out-of-memory retry's micro-batch) apply where the file has them
        overrides = (spec.config or {}).get("overrides") or {} if isinstance(spec.config, dict) else {}
        mapped = {k: v for k, v in overrides.items() if self.table.column_for(k, self.columns)}
        return self.table.nearest({**spec.params, **mapped}, self.columns)

    def start(self, spec: TrialSpec) -> None:
        if len(self._active) >= self._slots:
            raise RuntimeError(f"no free slot for trial {spec.number}")
        run = self._resolve(spec)
        self._active[spec.number] = _Active(spec, run, started=time.monotonic())

    def advance(self) -> list[Progress]:
        started = time.monotonic()
        try:
            return self._advance()
        finally:
            self.seconds["advance"] += time.monotonic() - started

    def _advance(self) -> list[Progress]:
        if self.advance_delay_s:
            time.sleep(self.advance_delay_s)
        out: list[Progress] = []
        for number, act in list(self._active.items()):
            fault = self.faults.get(number)
            if fault == "exception":
                raise RuntimeError(f"injected failure in trial {number}")
            if fault == "oom":
                del self._active[number]
                out.append(self._outcome(act, "failed", None, "out of memory (injected)", oom=True))
                continue
            step, value = act.run.points[act.next_point]
            act.next_point += 1
            value = math.nan if fault == "nan" else value
            out.append(Report(number, step / act.run.total_steps, step, value))
            if act.next_point == len(act.run.points):
                del self._active[number]
                out.append(self._outcome(act, "complete", value, None))
        return out

    def stop(self, number: int, reason: str) -> Outcome:
        act = self._active.pop(number)
        value = act.run.points[act.next_point - 1][1] if act.next_point else None
        return self._outcome(act, "pruned", value, reason)

    def close(self) -> None:
        self._active.clear()

    def _outcome(self, act: _Active, state: str, value: float | None, reason: str | None, oom: bool = False):
        extra = {
            "replay_index": act.run.index,
            "total_steps": act.run.total_steps,
            "replayed": {c: act.run.columns[c] for c in act.run.columns},
        }
        failure = (FailureKind.OOM if oom else FailureKind.ERROR) if state == "failed" else None
        return Outcome(
            act.spec.number,
            state,
            value,
            reason,
            failure=failure,
            steps=act.steps,
            seconds=time.monotonic() - act.started,
            extra=extra,
        )
