"""The check registry: every finding code with its severity and one line of documentation.

Record checks are small functions `fn(conversation) -> Iterable[message]`; token checks are
`fn(conversation, example, context) -> Iterable[message]`; both are registered with a decorator
that names the code and severity. Structural codes (raised while parsing and converting a record)
and dataset-level codes (duplicates, balance, outliers, overlap) are declared here too, so that
`CODES` is the one list of everything `validate` can say (docs/data.md is generated from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tunepilot.data.records import Severity
from tunepilot.registry import register_once


@dataclass(frozen=True)
class CheckInfo:
    code: str
    severity: Severity
    doc: str
    stage: str  # parse | record | tokens | dataset


CODES: dict[str, CheckInfo] = {}
RECORD_CHECKS: list[tuple[CheckInfo, Callable[..., Iterable[str]]]] = []
TOKEN_CHECKS: list[tuple[CheckInfo, Callable[..., Iterable[str]]]] = []


def declare(code: str, severity: Severity, doc: str, stage: str) -> CheckInfo:
    info = CheckInfo(code, severity, doc, stage)
    register_once(CODES, code, info, "data check")
    return info


def record_check(code: str, severity: Severity, doc: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn):
        RECORD_CHECKS.append((declare(code, severity, doc, "record"), fn))
        return fn

    return wrap


def token_check(code: str, severity: Severity, doc: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn):
        TOKEN_CHECKS.append((declare(code, severity, doc, "tokens"), fn))
        return fn

    return wrap


def severity_of(code: str) -> Severity:
    return CODES[code].severity if code in CODES else "error"


# Raised while reading and converting records (readers, formats, turns, spans).
for _code, _sev, _doc in [
    ("malformed_line", "error", "The line is not valid JSON (the parser's column is given)."),
    ("invalid_encoding", "error", "The line is not valid UTF-8, or text holds a lone UTF-16 surrogate."),
    ("blank_line", "warning", "A blank line inside a JSONL file (strict JSONL readers reject it)."),
    (
        "record_too_large",
        "error",
        "A record is larger than the per-record cap (TUNEPILOT_MAX_RECORD_BYTES, default 8 MiB); it is skipped.",
    ),
    ("csv_field_count", "error", "A CSV row has a different number of fields than the header."),
    ("duplicate_key", "error", "A JSON object names the same key twice (the parser keeps only the last)."),
    ("wrong_top_level_type", "error", "The record is not an object (e.g. an array, string or number)."),
    ("missing_field", "error", "A required field of the format is missing or null."),
    (
        "wrong_type",
        "error",
        "A field has the wrong JSON type (e.g. a number or list where text is expected).",
    ),
    ("empty_field", "error", "A prompt/user turn/text field is empty or whitespace only."),
    ("empty_assistant_turn", "error", "An answer (assistant turn, output, completion) is empty."),
    ("unknown_role", "error", "A message role is not system/user/assistant/tool (or a sharegpt alias)."),
    ("bad_turn_order", "error", "Turns are out of order (system not first, two user turns in a row, ...)."),
    ("no_final_assistant_turn", "error", "The conversation does not end with an assistant turn."),
    (
        "bad_span",
        "error",
        "A labelled span is outside its text, empty, or labels one slot twice differently.",
    ),
    ("template_render_failure", "error", "The prompt template could not render or mask the record."),
    (
        "format_detected",
        "info",
        "How auto-detection read the file (e.g. question/answer as prompt/response).",
    ),
]:
    declare(_code, _sev, _doc, "parse")
