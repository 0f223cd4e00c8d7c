"""From a data path to canonical conversations, streaming, with structural findings.

The format is detected once, from the first record that parses, and then applied to every record:
a record that does not fit it is a finding on its line (missing_field, wrong_type, ...), not a
different guess per line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tunepilot.data.detect import detect_format
from tunepilot.data.formats import FormatSpec, Problem, to_conversation
from tunepilot.data.readers import read_records
from tunepilot.data.records import Conversation, Finding
from tunepilot.errors import UserError


@dataclass
class ParseState:
    """What parsing learned along the way: the format and the structural findings."""

    spec: FormatSpec | None = None
    findings: list[Finding] = field(default_factory=list)
    records: int = 0  # records read, including broken ones


def iter_conversations(
    path: str, fmt: str, columns: dict[str, str], system: str | None, state: ParseState
) -> Iterator[Conversation]:
    for raw in read_records(path):
        state.records += 1
        if raw.error is not None:
            code = "invalid_encoding" if raw.error.startswith("invalid UTF-8") else "malformed_line"
            code = "csv_field_count" if raw.error.startswith("CSV row") else code
            state.findings.append(Finding("error", code, raw.line, raw.error, raw.source))
            continue
        if state.spec is None:
            if not isinstance(raw.value, dict) and fmt == "auto":
                state.findings.append(
                    Finding(
                        "error",
                        "wrong_top_level_type",
                        raw.line,
                        f"expected a JSON object per record, got {type(raw.value).__name__}",
                        raw.source,
                    )
                )
                continue
            state.spec = detect_format(raw.value, fmt, columns, system, raw.source)
            if state.spec.note:
                state.findings.append(Finding("info", "format_detected", None, state.spec.note, raw.source))
        try:
            yield to_conversation(raw.value, state.spec, raw.line, raw.source)
        except Problem as p:
            state.findings.append(Finding("error", p.code, raw.line, p.message, raw.source))
    if state.records == 0:
        raise UserError(f"{path}: holds no records")
    if state.spec is None:
        raise UserError(
            f"{path}: no record parsed, so the format cannot be detected; first problems: "
            + "; ".join(f"line {f.line}: {f.message}" for f in state.findings[:3])
        )
