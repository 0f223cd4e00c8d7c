"""How one run spreads over several GPUs: DDP, FSDP2 or DeepSpeed ZeRO, from the keys users already write.

    strategy: auto          # ddp, or fsdp when `fsdp`/`fsdp_config` is set, deepspeed when `deepspeed` is
    fsdp: full_shard auto_wrap                      # HF TrainingArguments / LLaMA-Factory
    fsdp_config: {fsdp_version: 2, reshard_after_forward: true, transformer_layer_cls_to_wrap: LlamaDecoderLayer}
    deepspeed: ds_z3_config.json                    # LLaMA-Factory / Axolotl; its "auto" values are filled here

Axolotl writes the FSDP options with an `fsdp_` prefix (fsdp_offload_params, fsdp_state_dict_type...),
accelerate without it; both are read. Bad values are reported with their key path (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunepilot.errors import UserError

FSDP_OPTIONS = ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard", "offload", "auto_wrap")


class FsdpConfig(BaseModel):
    """accelerate / HF `fsdp_config`, with or without Axolotl's `fsdp_` prefix."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[2] = Field(2, description="FSDP2 (torch fully_shard); FSDP1 is not supported.")
    reshard_after_forward: bool = Field(True, description="Free gathered weights after forward (ZeRO-3 like).")
    transformer_layer_cls_to_wrap: list[str] = Field(
        default_factory=list, description="Decoder layer classes sharded one by one; default: the model's own."
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP"] = "TRANSFORMER_BASED_WRAP"
    state_dict_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = "SHARDED_STATE_DICT"
    activation_checkpointing: bool = False
    offload_params: bool = False
    cpu_ram_efficient_loading: bool = False
    sync_module_states: bool = True
    use_orig_params: bool = True
    limit_all_gathers: bool = True

    @model_validator(mode="before")
    @classmethod
    def _names(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = {}
        for key, value in raw.items():
            name = key.removeprefix("fsdp_")
            out["version" if name == "fsdp_version" else name] = value
        return out

    @field_validator("transformer_layer_cls_to_wrap", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v

    @field_validator("auto_wrap_policy", "state_dict_type", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class ParallelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto", description="ddp, fsdp (FSDP2) or deepspeed; auto: from the fsdp/deepspeed keys, else ddp."
    )
    fsdp: list[str] = Field(default_factory=list, description="HF style: 'full_shard auto_wrap' (empty: off).")
    fsdp_config: FsdpConfig = Field(default_factory=FsdpConfig)
    deepspeed: str | None = Field(None, description="A DeepSpeed JSON config; its 'auto' values are filled.")

    @field_validator("fsdp", mode="before")
    @classmethod
    def _fsdp_words(cls, v: Any) -> Any:
        if v in (None, False, ""):
            return []
        if v is True:
            return ["full_shard", "auto_wrap"]
        words = v.split() if isinstance(v, str) else v
        bad = [w for w in words if w not in FSDP_OPTIONS]
        if bad:
            raise ValueError(f"unknown option(s) {', '.join(map(str, bad))}; known: {', '.join(FSDP_OPTIONS)}")
        return words

    @model_validator(mode="after")
    def _one_strategy(self) -> ParallelSettings:
        if self.deepspeed and self.fsdp:
            raise ValueError("both deepspeed and fsdp are set; choose one")
        return self

    @property
    def resolved(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        if self.deepspeed:
            return "deepspeed"
        fsdp_keys = self.fsdp_config.model_fields_set - {"version"}
        return "fsdp" if self.fsdp or fsdp_keys else "ddp"


# ---------------------------------------------------------------------------------------------- deepspeed
def deepspeed_config(
    path: str | Path, config: Any, *, world: int, total_steps: int, warmup_steps: int, hidden_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON with every "auto" filled from the run config, as HF's Trainer fills it.
    A value left "auto" that the run cannot decide is an error naming its key path."""
    path = Path(path)
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"deepspeed: cannot read {path} ({e.strerror or e}); give the path of a DeepSpeed JSON") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"deepspeed: {path} is not a JSON file ({e})") from e
    if not isinstance(ds, dict):
        raise UserError(f"deepspeed: {path} must hold a JSON object of DeepSpeed settings")
    t, dtype = config.train, config.model.dtype
    micro, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps * t.nproc // max(world, 1)
    values = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world,
        "gradient_clipping": t.max_grad_norm,
        "optimizer.params.lr": t.learning_rate,
        "optimizer.params.betas": [t.adam_beta1, t.adam_beta2],
        "optimizer.params.eps": t.adam_epsilon,
        "optimizer.params.weight_decay": t.weight_decay,
        "scheduler.params.warmup_max_lr": t.learning_rate,
        "scheduler.params.warmup_min_lr": 0.0,
        "scheduler.params.warmup_num_steps": warmup_steps,
        "scheduler.params.total_num_steps": total_steps,
        "bf16.enabled": dtype == "bfloat16",
        "fp16.enabled": dtype == "float16",
    }
    if hidden_size:  # HF's sizes for ZeRO-3 buckets (transformers.integrations.deepspeed)
        values.update(
            {
                "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
                "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
            }
        )
    left = _fill(ds, "", values)
    if left:
        raise UserError(f"deepspeed: {path}: 'auto' values tunepilot cannot fill", problems=left)
    _check_zero(ds, path)
    return ds


def _fill(node: dict[str, Any], prefix: str, values: dict[str, Any]) -> list[str]:
    left = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            left += _fill(value, dotted + ".", values)
        elif value == "auto":
            if dotted in values:
                node[key] = values[dotted]
            else:
                left.append(f"{dotted}: 'auto' has no run setting to come from; give a value")
    return left


def _check_zero(ds: dict[str, Any], path: Path) -> None:
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"deepspeed: {path}: zero_optimization.stage: {stage!r} is not 0, 1, 2 or 3")


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def check_launchable(settings: ParallelSettings, device: str) -> None:
    """DeepSpeed has no CPU path: refuse it up-front on a machine that cannot run it."""
    if settings.resolved != "deepspeed":
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available() or device == "cpu":
        raise UserError(
            "deepspeed: DeepSpeed ZeRO needs CUDA GPUs; on this machine use fsdp (fsdp: full_shard "
            "auto_wrap), which shards the same way through torch's FSDP2"
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "deepspeed: the deepspeed package is not installed; `pip install deepspeed`, or use fsdp "
            "(FSDP2) which needs nothing more"
        )
    raise UserError(
        "deepspeed: tunepilot maps and checks your DeepSpeed config, but its ZeRO training path is "
        "not built yet; use fsdp (FSDP2, ZeRO-3 style sharding) for now"
    )
