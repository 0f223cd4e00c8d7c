"""Format auto-detection: each of the first records votes for the format its keys fit; the majority
wins, so one defective record at the top of a file does not decide (or break) detection.
See `tunepilot.data.formats` for the formats and the column-mapping rules.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunepilot.data.formats import FormatSpec, canonical_columns, make_spec
from tunepilot.errors import UserError

SAMPLE = 64  # records that vote
# (format, keys that must all be present, column mapping), tried in order; the first match wins.
SIGNATURES: list[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]] = [
    ("messages", ("messages",), ()),
    ("sharegpt", ("conversations",), ()),
    ("alpaca", ("instruction", "output"), ()),
    ("prompt_completion", ("prompt", "completion"), ()),
    ("prompt_completion", ("prompt", "response"), (("response", "response"),)),
    ("spans", ("userInput",), ()),
]
# Well-known prompt and answer column names: a record with one of each (and no format signature) is
# read as prompt_completion, and an info finding names the mapping (GSM8K's question/answer,
# BANKING77's text/category, input/output, instruction/response, ...). First match wins.
PROMPT_KEYS = ("instruction", "question", "prompt", "query", "input", "text", "source", "utterance", "sentence")
ANSWER_KEYS = (
    "answer",
    "response",
    "output",
    "completion",
    "target",
    "reply",
    "label",
    "category",
    "intent",
    "class",
    "sentiment",
    "topic",
    "emotion",
)
AMBIGUOUS = "ambiguous"


def guess(record: Any) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """(format, columns) that this record's keys fit, ("ambiguous", others) for text + an unknown
    text column, or None."""
    if not isinstance(record, dict):
        return None
    for name, needed, columns in SIGNATURES:
        if all(k in record for k in needed):
            return name, columns
    prompt = next((k for k in PROMPT_KEYS if k in record), None)
    answer = next((k for k in ANSWER_KEYS if k in record), None)
    if prompt and answer:
        return "prompt_completion", (("prompt", prompt), ("response", answer))
    if "text" in record:
        others = tuple((k, k) for k, v in record.items() if k != "text" and isinstance(v, str))
        return ("text", ()) if not others else (AMBIGUOUS, others)
    return None


def detect_format(records: list[Any], fmt: str, columns: dict[str, str], system: str | None, source: str) -> FormatSpec:
    """The FormatSpec for `fmt`, or the one most of `records` fit for `auto`; UserError if none."""
    if fmt != "auto":
        return make_spec(fmt, columns, system)
    mapped = canonical_columns(columns)
    if mapped:
        return make_spec(_from_mapping(mapped, source), columns, system)
    votes = Counter(g for g in map(guess, records[:SAMPLE]) if g is not None and g[0] != AMBIGUOUS)
    if votes:
        (name, cols), _ = votes.most_common(1)[0]
        mapping = dict(cols)
        note = None
        if "prompt" in mapping:
            shown = ", ".join(f"{k}: {v}" for k, v in mapping.items())
            note = f"detected {name} with columns {{{shown}}}"
        return make_spec(name, mapping, system, note)
    ambiguous = [g for g in map(guess, records[:SAMPLE]) if g is not None]
    if ambiguous:
        others = [k for k, _ in ambiguous[0][1]]
        raise UserError(
            f"{source}: ambiguous format: a 'text' column next to {others}; this looks like labelled data, "
            f"not pretraining text. Set data.columns, e.g. {{prompt: text, response: {others[0]}}} "
            "(validate: --column prompt=text --column response=...), or data.format: text to train on "
            "the text only"
        )
    keys = sorted({k for r in records[:SAMPLE] if isinstance(r, dict) for k in r})
    raise UserError(
        f"{source}: unknown format; record keys {keys} match none of alpaca, sharegpt, messages, "
        "prompt_completion, text, spans. Set data.format and data.columns, e.g. "
        "columns: {prompt: <your input column>, response: <your answer column>}"
    )


def _from_mapping(mapped: dict[str, str], source: str) -> str:
    if "messages" in mapped:
        return "messages"
    if "prompt" in mapped or "response" in mapped:
        if not ("prompt" in mapped and "response" in mapped):
            raise UserError(f"{source}: data.columns maps only one of prompt/response; map both")
        return "prompt_completion"
    if "labels" in mapped:
        return "spans"
    if set(mapped) <= {"text", "system"}:
        return "text"
    raise UserError(f"{source}: cannot tell the format from data.columns {sorted(mapped)}; set data.format")
