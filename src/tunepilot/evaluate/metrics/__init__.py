"""Task metrics, by name: exact_match, numeric_match, accuracy, token_f1, field_f1, or `module:function`."""

from tunepilot.evaluate.metrics import _exact, _json_fields, _labels, _token_f1  # noqa: F401  (registration)
from tunepilot.evaluate.metrics._base import (
    BadReference,
    Direction,
    Metric,
    MetricContext,
    Scored,
    build_metric,
    canonical_name,
    metric_names,
    register_metric,
)
from tunepilot.evaluate.metrics._custom import CustomMetricError
from tunepilot.evaluate.metrics._exact import extract_number
from tunepilot.evaluate.metrics._json_fields import find_json_object
from tunepilot.evaluate.metrics._labels import LabelMatcher
from tunepilot.evaluate.metrics._token_f1 import token_f1

__all__ = [
    "BadReference",
    "CustomMetricError",
    "Direction",
    "LabelMatcher",
    "Metric",
    "MetricContext",
    "Scored",
    "build_metric",
    "canonical_name",
    "extract_number",
    "find_json_object",
    "metric_names",
    "register_metric",
    "token_f1",
]
