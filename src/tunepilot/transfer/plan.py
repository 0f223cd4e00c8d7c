"""From (proxy model, target model, proxy's winning config) to the target's config and the steps taken."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepilot.config import RunConfig, config_with
from tunepilot.modelinfo import ModelInfo, read_model_info
from tunepilot.transfer.rules import Step, TransferContext, apply_rules
from tunepilot.transfer.settings import TransferSettings

BATCH_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gpus")


@dataclass
class TransferResult:
    proxy: ModelInfo
    target: ModelInfo
    proxy_values: dict[str, Any]
    target_values: dict[str, Any]
    steps: list[Step]
    config: RunConfig  # the target's run config

    @property
    def lr_factor(self) -> float:
        return math.prod(s.lr_factor for s in self.steps)  # before rounding the LR to 3 digits

    def target_config(self) -> dict[str, Any]:
        v = self.target_values
        out = {k: v[k] for k in ("learning_rate", "method", *BATCH_KEYS)}
        out["effective_batch"] = v["per_device_train_batch_size"] * v["gradient_accumulation_steps"] * v["gpus"]
        if v["method"] != "full":
            out.update({k: v[k] for k in ("lora_rank", "lora_alpha", "use_rslora")})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "proxy_model": self.proxy.summary(),
            "target_model": self.target.summary(),
            "proxy_config": {k: self.proxy_values[k] for k in self.target_config() if k in self.proxy_values},
            "target_config": self.target_config(),
            "lr_factor": round(self.lr_factor, 6),
            "rules": [s.to_dict() for s in self.steps],
        }


def config_values(config: RunConfig, gpus: int | None = None) -> dict[str, Any]:
    """The values the rules move, read from a resolved RunConfig."""
    m, t = config.method, config.train
    method = "full" if m.finetuning_type == "full" else ("qlora" if config.model.quantization_bit else "lora")
    return {
        "learning_rate": t.learning_rate,
        "method": method,
        "lora_rank": m.lora_rank,
        "lora_alpha": m.alpha,
        "use_rslora": m.use_rslora,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gpus": gpus or config.train.nproc,
    }


def transfer_config(
    proxy_model: str | Path,
    target_model: str | Path,
    config: RunConfig,
    requested: dict[str, Any] | None = None,
    settings: TransferSettings | None = None,
    proxy_gpus: int | None = None,
    target_name: str | None = None,
) -> TransferResult:
    """Apply the rules; `requested` holds explicit target choices (gpus, batch layout, rank, method)."""
    settings = settings or TransferSettings()
    proxy, target = read_model_info(proxy_model), read_model_info(target_model)
    ctx = TransferContext(proxy, target, config_values(config, proxy_gpus), requested=dict(requested or {}))
    steps = apply_rules(ctx, settings)
    v = ctx.values
    v["learning_rate"] = float(f"{v['learning_rate']:.3g}")
    updates = {
        "model_name_or_path": str(target_name or target_model),
        "gguf_file": None,
        "learning_rate": v["learning_rate"],
        "per_device_train_batch_size": v["per_device_train_batch_size"],
        "gradient_accumulation_steps": v["gradient_accumulation_steps"],
        # the GPU count is part of the effective batch the LR was chosen for: fewer processes accumulate more
        "nproc": v["gpus"],
        "finetuning_type": "full" if v["method"] == "full" else "lora",
        "quantization_bit": 4 if v["method"] == "qlora" else None,
    }
    if v["method"] != "full":
        updates.update({"lora_rank": v["lora_rank"], "lora_alpha": v["lora_alpha"]})
    return TransferResult(proxy, target, ctx.proxy_values, dict(v), steps, config_with(config, updates))
