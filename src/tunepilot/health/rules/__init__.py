"""The health rules. Each module registers its rules with `@rule(code)`; importing this package
registers them all, in the order below (which is also the order findings are reported in)."""

from tunepilot.health.registry import RULES
from tunepilot.health.rules import evaluation, learning_rate, numeric, progress, stability

__all__ = ["RULES", "evaluation", "learning_rate", "numeric", "progress", "stability"]
