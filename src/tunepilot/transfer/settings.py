"""The exponents and policies of the transfer rules: settings with their sources, not magic numbers.

Every number here is either a published fit (with its source next to it) or a policy the user picks;
`tunepilot transfer --set width_exponents.llama=0.9` style overrides go through `with_overrides`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunepilot.errors import UserError


class TransferSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Width. Tinker cookbook `hyperparam_utils.get_lr` (Thinking Machines, the fit behind "LoRA Without
    # Regret", 2025): LR(H) = 5e-5 x M x (2000 / H)^P with M = 10 for LoRA, 1 for full fine-tuning,
    # P = 0.781 for Llama and 0.0775 for Qwen, fitted on their LR sweeps across model sizes.
    width_reference: float = Field(2000.0, gt=0, description="Reference hidden size of the width fit.")
    width_exponents: dict[str, float] = Field(
        default_factory=lambda: {"llama": 0.781, "qwen": 0.0775},
        description="Per family: LR ~ (reference / hidden_size)^exponent.",
    )
    default_width_exponent: float = Field(
        0.5,
        ge=0,
        description="Families without a published fit: between the Llama and Qwen fits "
        "(muP for Adam from scratch would be 1.0).",
    )
    full_base_lr: float = Field(5e-5, gt=0, description="Full fine-tuning LR at the reference width.")
    lora_lr_multiplier: float = Field(
        10.0, gt=0, description="LoRA LR / full fine-tuning LR (LoRA Without Regret, 2025: ~10x)."
    )
    # Depth. The width fits were measured on model series whose depth grows with width, so depth is
    # inside them already; an explicit exponent is available for series that change depth alone.
    depth_exponent: float = Field(0.0, ge=0, description="LR ~ (proxy_layers / target_layers)^exponent.")
    # Batch. Malladi et al. 2022 (On the SDEs and Scaling Rules for Adaptive Gradient Algorithms):
    # for Adam, scale the LR with the square root of the batch-size ratio.
    batch_exponent: float = Field(0.5, ge=0, description="LR ~ (target_batch / proxy_batch)^exponent.")
    keep_global_batch: bool = Field(
        True, description="More GPUs: lower accumulation to keep the effective batch (no LR change)."
    )
    alpha_policy: Literal["keep_ratio", "keep_alpha"] = Field(
        "keep_ratio", description="On a rank change keep alpha/rank (adapter scale) or alpha itself."
    )
    rank_policy: Literal["keep", "match_params"] = Field(
        "keep", description="keep the rank, or match the proxy adapter's parameter count."
    )
    # With alpha/r scaling and Adam the early update of B@A grows with alpha x lr, so the optimal LR is
    # ~rank independent at fixed alpha (LoRA Without Regret, 2025); keeping alpha/r instead multiplies
    # alpha by the rank ratio, so the LR moves by its inverse.
    rank_lr_exponent: float = Field(1.0, ge=0, description="LR ~ (alpha_proxy / alpha_target)^exponent.")
    pilot_factors: tuple[float, ...] = Field((0.5, 1.0, 2.0), description="Pilot grid around the transferred LR.")
    pilot_fraction: float = Field(0.08, gt=0, le=0.5, description="Share of the planned steps per pilot.")

    def width_exponent(self, family: str) -> float:
        return self.width_exponents.get(family, self.default_width_exponent)


def with_overrides(settings: TransferSettings, items: dict[str, Any]) -> TransferSettings:
    """`width_exponents.llama=0.9`, `batch_exponent=1` ...; every problem reported at once."""
    data = settings.model_dump()
    for key, value in items.items():
        head, _, sub = key.partition(".")
        if head not in data:
            raise UserError(f"--rule-set {key}: unknown transfer setting; known: {', '.join(sorted(data))}")
        if sub:
            data[head] = {**data[head], sub: value}
        else:
            data[head] = value
    try:
        return TransferSettings.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise UserError("--rule-set: invalid transfer settings", problems=problems) from e
