"""Accuracy over a label set: classification phrased as generation.

The generated text is mapped to one allowed label, then compared with the reference label. The
mapping tolerates what small models do: different case or separators ("Card arrival" for
`card_arrival`), the label followed by an explanation, or a near miss in spelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from tunepilot.errors import UserError
from tunepilot.evaluate.metrics._base import BadReference, Metric, MetricContext, Scored, register_metric
from tunepilot.evaluate.metrics._text import normalize_text

# Below this difflib ratio a prediction is "no label" rather than a guess; 0.75 accepts one or two
# typos in a 12-character label and rejects unrelated words.
SIMILARITY_CUTOFF = 0.75


class LabelMatcher:
    def __init__(self, labels: Sequence[str]):
        self.by_norm = {normalize_text(label): label for label in labels}

    def match(self, text: str) -> str | None:
        """Exact (normalised) match, else the label named earliest in the text (longest on a tie),
        else the closest label by string similarity, else None."""
        norm = normalize_text(text)
        if norm in self.by_norm:
            return self.by_norm[norm]
        padded = f" {norm} "
        named = [(padded.find(f" {key} "), -len(key), key) for key in self.by_norm if f" {key} " in padded]
        if named:
            return self.by_norm[min(named)[2]]
        close = difflib.get_close_matches(norm, list(self.by_norm), n=1, cutoff=SIMILARITY_CUTOFF)
        return self.by_norm[close[0]] if close else None


@register_metric("accuracy", "label_accuracy")
class LabelAccuracy(Metric):
    name = "accuracy"

    def __init__(self, context: MetricContext):
        if not context.labels:
            raise UserError("metric accuracy needs a label set: set evaluate.labels or evaluate.labels_file")
        self.matcher = LabelMatcher(context.labels)

    def score(self, prediction: str, reference: str) -> Scored:
        ref = self.matcher.by_norm.get(normalize_text(reference))
        if ref is None:
            raise BadReference(f"reference {reference!r} is not one of the allowed labels")
        pred = self.matcher.match(prediction)
        if pred is None:
            return Scored(0.0, note="matches no allowed label", counts={"unmatched": 1})
        return Scored(float(pred == ref), extracted=pred, counts={"unmatched": 0})

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float]:
        out = super().aggregate(scored)
        out["unmatched"] = float(sum(s.counts.get("unmatched", 0) for s in scored))
        return out
