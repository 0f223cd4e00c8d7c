"""tunepilot's own `metrics.jsonl`: already the stream; read it and the run's config next to it."""

from __future__ import annotations

from pathlib import Path

from tunepilot.logs.base import RunLog, sort_and_dedupe
from tunepilot.logs.siblings import apply_siblings
from tunepilot.logs.values import first_json_object, read_json, to_int
from tunepilot.stream import read_stream


def detect(path: Path) -> Path | None:
    if path.is_dir():
        path = path / "metrics.jsonl"
        return path if path.is_file() else None
    if path.suffix != ".jsonl":
        return None
    first = first_json_object(path)
    return path if first is not None and first.get("kind") in ("train", "eval", "event") else None


def read(path: Path) -> RunLog:
    records, dropped = sort_and_dedupe(read_stream(path))
    log = RunLog(records=records, source="tunepilot", path=path)
    if dropped:
        log.notes.append(f"{dropped} repeated step(s) dropped (kept the last line of each)")
    summary = path.parent / "summary.json"
    if summary.is_file():
        data = read_json(summary, "a tunepilot summary.json")
        if isinstance(data, dict):
            log.planned_steps = to_int(data.get("planned_steps")) or to_int(data.get("max_steps"))
            parameters = data.get("parameters")
            if isinstance(parameters, dict):
                log.num_params = to_int(parameters.get("total"))
    apply_siblings(log, path.parent)
    return log
