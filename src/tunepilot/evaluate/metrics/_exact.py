"""Exact match after normalisation, and exact match of the numeric answer (GSM8K-style)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from tunepilot.evaluate.metrics._base import BadReference, Metric, MetricContext, Scored, register_metric
from tunepilot.evaluate.metrics._text import normalize_text


@register_metric("exact_match", "em")
class ExactMatch(Metric):
    name = "exact_match"

    def __init__(self, context: MetricContext | None = None):
        pass

    def score(self, prediction: str, reference: str) -> Scored:
        pred, ref = normalize_text(prediction), normalize_text(reference)
        return Scored(float(pred == ref), extracted=pred)


# A number: optional sign (not when glued to a word or digit, so "16-3" is 16 and 3), optional "$",
# digits with thousands commas ("1,234") or plain, optional decimals. "1,2,3" reads as 1, 2 and 3
# because a thousands group has exactly three digits.
_NUMBER = re.compile(
    r"(?:(?<![\w)])(?P<sign>[-\u2212]))?\s?\$?\s?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
)
# Where an answer is announced, in order of trust: GSM8K's "#### N", LaTeX "\boxed{N}", "answer is N".
_MARKERS = (re.compile(r"####"), re.compile(r"\\boxed\{"), re.compile(r"answer(?:\s+is)?\s*[:=]?", re.I))


def _as_decimal(match: re.Match) -> Decimal:
    text = match.group("num").replace(",", "")
    value = Decimal(text)
    return -value if match.group("sign") else value


def extract_number(text: str) -> Decimal | None:
    """The answer's number: the first after the last answer marker, else the last number in the text.

    "#### 1,234" -> 1234; "The answer is $18." -> 18; "so she has 5 apples and 3 pears" -> 3.
    """
    for marker in _MARKERS:
        hits = list(marker.finditer(text))
        if hits:
            found = _NUMBER.search(text, hits[-1].end())
            if found:
                return _as_decimal(found)
    numbers = list(_NUMBER.finditer(text))
    return _as_decimal(numbers[-1]) if numbers else None


def format_number(value: Decimal) -> str:
    """Canonical text: 18.00 -> "18", 1E+2 -> "100", 0.50 -> "0.5"."""
    try:
        return format(value.normalize(), "f")
    except InvalidOperation:  # pragma: no cover - normalize of a finite Decimal does not fail
        return str(value)


@register_metric("numeric_match", "numeric", "gsm8k")
class NumericMatch(Metric):
    """Exact match of the extracted numbers: 18, 18.0, $18 and "#### 18" are the same answer."""

    name = "numeric_match"

    def __init__(self, context: MetricContext | None = None):
        pass

    def score(self, prediction: str, reference: str) -> Scored:
        ref = extract_number(reference)
        if ref is None:
            raise BadReference(f"reference has no number: {reference[-80:]!r}")
        pred = extract_number(prediction)
        if pred is None:
            return Scored(0.0, note="no number in the prediction")
        return Scored(float(pred == ref), extracted=format_number(pred))
