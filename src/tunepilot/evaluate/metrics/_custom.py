"""A user's own metric, named in the config as `module:function` or `path/to/file.py:function`.

The function takes `(prediction, reference)` and returns a number (a bool counts as 0/1); the
aggregate is the mean, under the name as written. Every way this can go wrong is a UserError that
names the metric and says what to fix; the runner adds the record when the function raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

from tunepilot.errors import UserError
from tunepilot.evaluate.metrics._base import Metric, Scored


class CustomMetricError(UserError):
    """The custom function raised or returned something that is not a number."""


def _import(module: str, spec_text: str):
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise UserError(f"metric {spec_text!r}: file {path} not found")
        spec = importlib.util.spec_from_file_location(f"tunepilot_custom_metric_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            raise UserError(f"metric {spec_text!r}: importing {path} failed: {type(e).__name__}: {e}") from e
        return mod
    try:
        return importlib.import_module(module)
    except Exception as e:
        hint = "; if it is a file, write it as path/to/file.py:function" if isinstance(e, ImportError) else ""
        raise UserError(f"metric {spec_text!r}: cannot import module {module!r} ({type(e).__name__}: {e}){hint}") from e


def load_callable(spec_text: str) -> Callable[[str, str], float]:
    module, _, attr = spec_text.rpartition(":")
    if not module or not attr:
        raise UserError(f"metric {spec_text!r}: write a custom metric as module:function")
    fn = getattr(_import(module, spec_text), attr, None)
    if fn is None:
        raise UserError(f"metric {spec_text!r}: module {module!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UserError(f"metric {spec_text!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


class CustomMetric(Metric):
    def __init__(self, name: str, fn: Callable[[str, str], float]):
        self.name = name
        self.fn = fn

    def score(self, prediction: str, reference: str) -> Scored:
        try:
            value = self.fn(prediction, reference)
        except Exception as e:
            raise CustomMetricError(f"metric {self.name!r} raised {type(e).__name__}: {e}") from e
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CustomMetricError(f"metric {self.name!r} returned {value!r}; return a finite number")
        return Scored(float(value))


def load_custom_metric(spec_text: str) -> CustomMetric:
    return CustomMetric(spec_text, load_callable(spec_text))
