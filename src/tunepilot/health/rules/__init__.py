"""The health rules. Each module registers its rules with `@rule(code)`; importing this package
registers them all. `diagnose` reports findings by verdict, then severity."""

from tunepilot.health.registry import RULES
from tunepilot.health.rules import baseline, evaluation, learning_rate, numeric, progress, stability

__all__ = ["RULES", "baseline", "evaluation", "learning_rate", "numeric", "progress", "stability"]
