"""Tolerant parsing of the values real logs contain: numbers as strings, NaN spelled many ways,
Windows line endings, a byte-order mark, a torn last line, "1 day, 2:03:04" durations.

Readers use these helpers so that odd input never crashes them: a value that cannot be read becomes
None (and the reader says so in `RunLog.notes`), never an exception.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError

_NON_FINITE = {
    "nan": math.nan,
    "+nan": math.nan,
    "-nan": math.nan,
    "inf": math.inf,
    "+inf": math.inf,
    "-inf": -math.inf,
    "infinity": math.inf,
    "-infinity": -math.inf,
}


def to_float(value: Any) -> float | None:
    """A float from a number or a numeric string ("0.5", "1e-4", "NaN", "inf"); None if not numeric."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NON_FINITE:
            return _NON_FINITE[text]
        try:
            return float(text)
        except ValueError:
            return None
    return None


def to_int(value: Any) -> int | None:
    number = to_float(value)
    if number is None or not math.isfinite(number):
        return None
    return int(round(number))


MAX_STEP = 10**12  # far beyond any real run; larger "steps" are garbage


def to_step(value: Any) -> int | None:
    """A step count: a non-negative integer below MAX_STEP, else None."""
    step = to_int(value)
    return step if step is not None and 0 <= step < MAX_STEP else None


_DURATION = re.compile(r"^(?:(\d+)\s+days?,\s*)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def to_seconds(value: Any) -> float | None:
    """Seconds from a number or an "H:MM:SS" / "1 day, H:MM:SS" string (LLaMA-Factory's elapsed_time)."""
    number = to_float(value)
    if number is not None:
        return number
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value.strip())
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_text(path: Path) -> str:
    """File text with any BOM dropped; undecodable bytes replaced rather than fatal."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e}); check the path and its permissions") from e
    return data.decode("utf-8-sig", errors="replace")


def read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected {expected}") from e


def read_json_lines(path: Path, expected: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, object) pairs of a JSONL file, CRLF-tolerant.

    A torn last line (a run killed mid-write) is dropped with a note; a bad line elsewhere is a
    UserError naming the line, unless most lines are fine, in which case it is skipped with a note.
    """
    lines = read_text(path).splitlines()
    rows: list[tuple[int, dict[str, Any]]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(obj, dict):
            rows.append((number, obj))
        else:
            bad.append(number)
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    notes = []
    if bad == [last] and rows:
        notes.append(f"line {last} is cut off (run killed mid-write?); ignored")
    elif bad and len(bad) * 10 <= len(rows):
        notes.append(f"{len(bad)} unreadable line(s) skipped (first: line {bad[0]})")
    elif bad:
        raise UserError(f"{path}:{bad[0]}: not a JSON object per line; expected {expected}")
    return rows, notes


def first_json_object(path: Path) -> dict[str, Any] | None:
    """The first JSON object of a JSONL file, for format detection; None if there is none."""
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return obj if isinstance(obj, dict) else None
    except (OSError, json.JSONDecodeError):
        return None
    return None
