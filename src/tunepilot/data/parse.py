"""From a data path to canonical conversations, streaming, with structural findings.

The format is detected once, by a vote of the first records that parse (`detect.SAMPLE`), and then
applied to every record: a record that does not fit it is a finding on its line (missing_field,
wrong_type, ...), not a different guess per line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from tunepilot.data.checks.registry import severity_of
from tunepilot.data.detect import SAMPLE, detect_format, guess
from tunepilot.data.formats import FormatSpec, Problem, to_conversation
from tunepilot.data.readers import READERS, read_records, resolve_files
from tunepilot.data.records import Conversation, DataFinding, RawRecord
from tunepilot.data.sources import sources
from tunepilot.errors import UserError


@dataclass
class ParseState:
    """What parsing learned along the way: the format and the structural findings."""

    spec: FormatSpec | None = None
    findings: list[DataFinding] = field(default_factory=list)
    records: int = 0  # records read, including broken ones


def iter_split(settings, which: str, state: ParseState, limit: int | None = None) -> Iterator[Conversation]:
    """The records of data.train or data.eval: one path, or each named dataset of dataset_info.json
    with its own format and columns (`limit` records of each, as LLaMA-Factory's max_samples)."""
    for part, src in enumerate(sources(settings, which)):
        if src.fields is None:
            convs = iter_conversations(src.path, settings.format, settings.columns, settings.system, state)
        else:
            spec = FormatSpec(src.format, dict(src.fields), None, settings.system, dict(src.tags))
            convs = iter_conversations(src.path, src.format, {}, settings.system, state, spec=spec)
        for conv in islice(convs, limit):
            conv.part = part
            yield conv


def iter_conversations(
    path: str,
    fmt: str,
    columns: dict[str, str],
    system: str | None,
    state: ParseState,
    spec: FormatSpec | None = None,
) -> Iterator[Conversation]:
    """`spec`: the format as given (a dataset_info.json entry), not detected."""
    if fmt == "auto" and spec is None:
        _same_format_everywhere(path, columns, system)
    raws = read_records(path)
    head = []
    for raw in raws:
        head.append(raw)
        if sum(r.error is None for r in head) >= SAMPLE:
            break
    good = [r for r in head if r.error is None]
    if not head:
        raise UserError(f"{path}: holds no records")
    if not good:
        first = "; ".join(f"line {r.line}: {r.error}" for r in head[:3])
        raise UserError(f"{path}: no record parses, so this is no known format; first problems: {first}")
    state.spec = spec or detect_format([r.value for r in good], fmt, columns, system, good[0].source)
    if state.spec.note:
        state.findings.append(DataFinding("info", "format_detected", None, state.spec.note, good[0].source))
    for raw in chain(head, raws):
        state.records += 1
        conv = _convert(raw, state)
        if conv is not None:
            yield conv


def _convert(raw: RawRecord, state: ParseState) -> Conversation | None:
    if raw.error is not None:
        state.findings.append(DataFinding(severity_of(raw.code), raw.code, raw.line, raw.error, raw.source))
        return None
    try:
        return to_conversation(raw.value, state.spec, raw.line, raw.source)
    except Problem as p:
        message = p.message
        other = guess(raw.value) if p.code == "missing_field" else None
        if other is not None and other[0] != state.spec.name and other[0] != "ambiguous":
            message += f" (the record looks like {other[0]} format; use one format per file)"
        state.findings.append(DataFinding("error", p.code, raw.line, message, raw.source))
        return None


def _same_format_everywhere(path: str, columns: dict[str, str], system: str | None) -> None:
    """A directory whose files hold different record formats (alpaca here, sharegpt there) is a
    usage error, like one that mixes file types: one format is applied to all records."""
    files = resolve_files(Path(path))
    if len(files) < 2:
        return
    found: dict[str, str] = {}
    for file, kind in files:
        head = [r.value for r in islice(READERS[kind](file), SAMPLE) if r.error is None]
        if not head:
            continue
        try:
            found[file.name] = detect_format(head, "auto", columns, system, str(file)).name
        except UserError:
            found[file.name] = "unknown"
    if len(set(found.values())) > 1:
        listing = ", ".join(f"{name} ({fmt})" for name, fmt in list(found.items())[:8])
        raise UserError(f"{path}: directory mixes record formats: {listing}; keep one format per directory")
