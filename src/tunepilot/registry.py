"""One rule for every registry (metrics, log and data readers, formats, templates, health rules,
data checks): a name means one thing. Registering a taken name is a programming error, raised at
import time, so two plug-ins can never silently shadow each other."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def register_once(table: dict[str, Any], name: str, value: T, what: str) -> T:
    if name in table:
        raise ValueError(f"duplicate {what} name {name!r}: {table[name]!r} is registered under it already")
    table[name] = value
    return value
