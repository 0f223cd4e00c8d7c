"""Format auto-detection from the first record that parses (see `tunepilot.data.formats`)."""

from __future__ import annotations

from typing import Any

from tunepilot.data.formats import CANONICAL, FormatSpec, canonical_columns, make_spec
from tunepilot.errors import UserError

# (format, keys that must all be present), tried in order; the first match wins.
SIGNATURES: list[tuple[str, tuple[str, ...]]] = [
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("prompt_completion", ("prompt", "response")),
    ("spans", ("userInput",)),
]
# Well-known prompt/answer column pairs accepted without a mapping (reported as an info finding).
PAIRS = [("question", "answer"), ("query", "response"), ("input", "output"), ("instruction", "response")]


def detect_format(
    record: Any, fmt: str, columns: dict[str, str], system: str | None, source: str
) -> FormatSpec:
    """The FormatSpec for `fmt` (or the detected one for `auto`); UserError if nothing fits."""
    if fmt != "auto":
        return make_spec(fmt, columns, system)
    if not isinstance(record, dict):
        raise UserError(
            f"{source}: records must be JSON objects (or CSV rows), got {type(record).__name__}; "
            "cannot detect the format"
        )
    mapped = canonical_columns(columns)
    if mapped:
        return make_spec(_from_mapping(mapped, source), columns, system)
    keys = set(record)
    for name, needed in SIGNATURES:
        if all(k in keys for k in needed):
            spec = make_spec(name, {"response": "response"} if "response" in needed else {}, system)
            return spec
    for prompt, answer in PAIRS:
        if prompt in keys and answer in keys:
            note = f"detected prompt_completion with columns {{prompt: {prompt}, response: {answer}}}"
            return make_spec("prompt_completion", {"prompt": prompt, "response": answer}, system, note)
    if "text" in keys:
        others = [k for k, v in record.items() if k != "text" and isinstance(v, str)]
        if not others:
            return make_spec("text", {}, system)
        raise UserError(
            f"{source}: ambiguous format: a 'text' column next to {others}; this looks like "
            f"labelled data, not pretraining text. Set data.columns, e.g. "
            f"{{prompt: text, response: {others[0]}}}, or data.format: text to train on text only"
        )
    raise UserError(
        f"{source}: unknown format; record keys {sorted(keys)} match none of alpaca, sharegpt, "
        "messages, prompt_completion, text, spans. Set data.format and data.columns, e.g. "
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


__all__ = ["CANONICAL", "detect_format"]
