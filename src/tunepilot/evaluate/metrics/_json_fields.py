"""Field-level precision, recall and F1 for extraction answered as a JSON object.

Prediction and reference are flattened into (field, value) pairs: nested objects give dotted
field names, a list gives one pair per item, null and "" mean "absent". A pair counts as found
when field and normalised value both agree; the aggregate is micro-averaged over all pairs, so a
record with five slots weighs five times one with a single slot.

The prediction may hold text or a ``` code fence around the object: the first parseable JSON object
in it is used. A prediction with no parseable object is a miss on every reference field and is
counted in `invalid_json`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tunepilot.evaluate.metrics._base import BadReference, Metric, MetricContext, Scored, register_metric

_DECODER = json.JSONDecoder()
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in the text, or None. Tries each "{" in turn, so prose, code fences
    and trailing remarks around the object do not matter."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


def _norm_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = " ".join(str(value).split()).casefold().rstrip(".")
    if _PLAIN_NUMBER.fullmatch(text):  # "4", 4 and 4.0 are the same value
        return format(Decimal(text).normalize(), "f")
    return text


def field_pairs(obj: dict[str, Any], prefix: str = "") -> Counter:
    pairs: Counter = Counter()
    for key, value in obj.items():
        name = f"{prefix}{str(key).strip().casefold()}"
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                pairs += field_pairs(item, prefix=f"{name}.")
            elif item is not None and item != "":
                pairs[(name, _norm_value(item))] += 1
    return pairs


def _reference_pairs(reference: str) -> Counter:
    try:
        obj = json.loads(reference)
    except json.JSONDecodeError as e:
        raise BadReference(f"reference is not valid JSON ({e.msg}): {reference[:80]!r}") from e
    if not isinstance(obj, dict):
        raise BadReference(f"reference is JSON but not an object: {reference[:80]!r}")
    return field_pairs(obj)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0  # nothing expected, nothing predicted: perfect
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@register_metric("field_f1", "json_f1", "json_fields")
class FieldF1(Metric):
    name = "field_f1"

    def __init__(self, context: MetricContext | None = None):
        pass

    def score(self, prediction: str, reference: str) -> Scored:
        ref = _reference_pairs(reference)
        obj = find_json_object(prediction)
        if obj is None:
            counts = {"tp": 0, "fp": 0, "fn": sum(ref.values()), "invalid_json": 1}
            return Scored(_prf(0, 0, counts["fn"])[2], note="invalid JSON: no object could be parsed", counts=counts)
        pred = field_pairs(obj)
        tp = sum((pred & ref).values())
        counts = {"tp": tp, "fp": sum(pred.values()) - tp, "fn": sum(ref.values()) - tp, "invalid_json": 0}
        extracted = json.dumps(obj, ensure_ascii=False, sort_keys=True)
        return Scored(_prf(tp, counts["fp"], counts["fn"])[2], extracted=extracted, counts=counts)

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float]:
        total = Counter()
        for s in scored:
            total.update(s.counts)
        precision, recall, f1 = _prf(total["tp"], total["fp"], total["fn"])
        exact = sum(1 for s in scored if not s.counts["invalid_json"] and not s.counts["fp"] + s.counts["fn"])
        return {
            "field_f1": f1,
            "field_precision": precision,
            "field_recall": recall,
            "json_exact": exact / len(scored) if scored else 0.0,
            "invalid_json": float(total["invalid_json"]),
        }
