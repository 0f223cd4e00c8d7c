"""LLaMA-Factory `trainer_log.jsonl`: one line per logging step, eval lines at the step they follow.

Lines carry `current_steps` and `total_steps`; a train line has `loss` and `lr` (older versions:
`learning_rate`), an eval line `eval_loss`; a closing line with neither is a progress summary and is
skipped. Steps missing from a line are placed from its `percentage` or after the previous line. The
run's config comes from `training_args.yaml`, `adapter_config.json` and `all_results.json` next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunepilot.logs.base import RunLog, sort_and_dedupe
from tunepilot.logs.siblings import apply_siblings
from tunepilot.logs.values import first_json_object, read_json_lines, to_float, to_int, to_seconds, to_step
from tunepilot.stream import EvalPoint, Record, TrainStep

NAME = "trainer_log.jsonl"
_BOOKKEEPING = {"runtime", "samples_per_second", "steps_per_second"}


def detect(path: Path) -> Path | None:
    if path.is_dir():
        path = path / NAME
        return path if path.is_file() else None
    if path.name == NAME:
        return path
    if path.suffix != ".jsonl":
        return None
    first = first_json_object(path)
    return path if first is not None and "current_steps" in first else None


def read(path: Path) -> RunLog:
    rows, notes = read_json_lines(path, "a LLaMA-Factory trainer_log.jsonl (one JSON object per line)")
    log = RunLog(records=[], source="llamafactory", path=path, notes=notes)
    records: list[Record] = []
    step, inferred = 0, 0
    for _, row in rows:
        total = to_step(row.get("total_steps"))
        if total:
            log.planned_steps = max(log.planned_steps or 0, total)
        given = _step(row, log.planned_steps)
        if given is None:
            inferred += 1
            given = step + 1
        step = given
        record = _record(row, step)
        if record is not None:
            records.append(record)
    if inferred:
        log.notes.append(f"{inferred} line(s) without a step: placed after the previous line")
    log.records, dropped = sort_and_dedupe(records)
    if dropped:
        log.notes.append(f"{dropped} repeated line(s) dropped (multi-process logging or a resume; kept the last)")
    apply_siblings(log, path.parent)
    return log


def _step(row: dict[str, Any], total: int | None) -> int | None:
    for key in ("current_steps", "step", "global_step"):
        step = to_step(row.get(key))
        if step is not None:
            return step
    percentage = to_float(row.get("percentage"))
    if percentage is not None and total:
        return to_step(percentage * total / 100)
    return None


def _record(row: dict[str, Any], step: int) -> Record | None:
    epoch = to_float(row.get("epoch"))
    seconds = to_seconds(row.get("elapsed_time"))
    if "loss" in row:
        tokens = to_int(row.get("total_tokens"))
        lr = to_float(row.get("lr", row.get("learning_rate")))
        return TrainStep(
            step=step,
            loss=to_float(row["loss"]),
            lr=lr,
            grad_norm=to_float(row.get("grad_norm")),
            epoch=epoch,
            seconds=seconds,
            tokens=tokens or None,
        )
    metrics = {
        key[5:]: to_float(value)
        for key, value in row.items()
        if key.startswith("eval_") and key[5:] not in _BOOKKEEPING
    }
    if metrics:
        numbers = {k: v for k, v in metrics.items() if v is not None}
        return EvalPoint(step=step, eval_loss=numbers.pop("loss", None), metrics=numbers, epoch=epoch, seconds=seconds)
    return None
