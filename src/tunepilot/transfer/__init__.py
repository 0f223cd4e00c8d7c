"""Move a config found on a proxy model to a target model: explicit scaling rules, then pilot runs.

`transfer_config` applies the rule registry (tunepilot.transfer.rules) to the shapes in each model's
config.json and the proxy's winning config; `tunepilot.transfer.pilot` checks the result with short
runs on the target.
"""

from tunepilot.transfer.plan import TransferResult, transfer_config
from tunepilot.transfer.rules import RULES, Step, TransferContext, apply_rules
from tunepilot.transfer.settings import TransferSettings, with_overrides

__all__ = [
    "RULES",
    "Step",
    "TransferContext",
    "TransferResult",
    "TransferSettings",
    "apply_rules",
    "transfer_config",
    "with_overrides",
]
