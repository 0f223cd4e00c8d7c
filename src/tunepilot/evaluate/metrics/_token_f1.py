"""Token-level F1 (SQuAD): overlap of the normalised bags of words."""

from __future__ import annotations

from collections import Counter

from tunepilot.evaluate.metrics._base import Metric, MetricContext, Scored, register_metric
from tunepilot.evaluate.metrics._text import tokens


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)  # both empty is a match; one empty is not
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@register_metric("token_f1", "f1")
class TokenF1(Metric):
    name = "token_f1"

    def __init__(self, context: MetricContext | None = None):
        pass

    def score(self, prediction: str, reference: str) -> Scored:
        return Scored(token_f1(prediction, reference))
