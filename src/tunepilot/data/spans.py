"""The `spans` format: span extraction (Restaurant8k layout) trained as text -> JSON answer.

A record is `{"userInput": {"text": ...}, "context": {"requestedSlots": [...]}, "labels": [{"slot":
name, "valueSpan": {"startIndex": s, "endIndex": e}}]}` (startIndex absent means 0). It becomes

    user:      the utterance, plus a line "Requested slots: people" when the dialogue context asked
               for slots (it disambiguates a bare "6" or "at 7")
    assistant: a JSON object {slot: text[s:e]} with slots in the order they appear in the text,
               `{}` when nothing is labelled (the model must learn to say "no slots" too)

Fields can be renamed with columns: text (default userInput.text), labels, context
(default context.requestedSlots).
"""

from __future__ import annotations

import json
from typing import Any

from tunepilot.data.formats import Problem, _system_messages, get_field, register_format, required_str


def span_values(text: str, labels: Any, column: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, list):
        raise Problem("wrong_type", f"field '{column}' must be a list of labelled spans")
    found: list[tuple[int, str, str]] = []
    for i, label in enumerate(labels):
        span = label.get("valueSpan") if isinstance(label, dict) else None
        slot = label.get("slot") if isinstance(label, dict) else None
        if not isinstance(slot, str) or not isinstance(span, dict):
            raise Problem("wrong_type", f"{column}[{i}] needs 'slot' (string) and 'valueSpan' (object)")
        start, end = span.get("startIndex", 0), span.get("endIndex")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise Problem(
                "bad_span",
                f"{column}[{i}] ({slot}): span [{start}, {end}) is outside the text of length {len(text)} or empty",
            )
        value = text[start:end]
        if slot in {s for _, s, _ in found}:
            prior = next(v for _, s, v in found if s == slot)
            if prior != value:
                raise Problem(
                    "bad_span",
                    f"{column}[{i}]: slot '{slot}' is labelled twice with different values ({prior!r}, {value!r})",
                )
            continue
        found.append((start, slot, value))
    return {slot: value for _, slot, value in sorted(found)}


@register_format("spans", {"text": "userInput.text", "labels": "labels", "context": "context.requestedSlots"})
def _spans(record: dict[str, Any], spec) -> list[dict[str, str]]:
    text = required_str(record, spec, "text")
    answer = span_values(text, get_field(record, spec.fields["labels"]), spec.fields["labels"])
    requested = get_field(record, spec.fields["context"])
    prompt = text
    if isinstance(requested, list) and requested and all(isinstance(s, str) for s in requested):
        prompt = f"{text}\nRequested slots: {', '.join(requested)}"
    return [
        *_system_messages(record, spec),
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
    ]
