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
    path: str | Path,
    config: Any,
    *,
    world: int,
    total_steps: int,
    warmup_steps: int,
    hidden_size: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The DeepSpeed JSON with every "auto" filled from the run config, as HF's Trainer fills it.
    `dtype`: the weights' dtype as resolved on the device (model.dtype `auto` is bf16 on most GPUs).
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
    t, dtype = config.train, dtype or config.model.dtype
    micro, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps * t.nproc // max(world, 1)
    values = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world,
        "gradient_clipping": t.max_grad_norm,
        "bf16.enabled": dtype == "bfloat16",
        "fp16.enabled": dtype == "float16",
    }
    if hidden_size:  # HF's sizes for ZeRO-3 buckets (transformers.integrations.deepspeed)
        prefetch, persistence = int(0.9 * hidden_size * hidden_size), 10 * hidden_size
        values.update(
            {
                "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
                "zero_optimization.stage3_prefetch_bucket_size": prefetch,
                "zero_optimization.stage3_param_persistence_threshold": persistence,
                "zero_optimization.prefetch_bucket_size": prefetch,  # Axolotl's names, without stage3_
                "zero_optimization.param_persistence_threshold": persistence,
            }
        )
    _check_own_sections(ds, path)
    mismatched = _mismatched(ds, values)
    if mismatched:
        raise UserError(f"deepspeed: {path}: values that disagree with the run config", problems=mismatched)
    left = _fill(ds, "", values)
    if left:
        raise UserError(f"deepspeed: {path}: 'auto' values tunepilot cannot fill", problems=left)
    _check_zero(ds, path)
    ds.setdefault("zero_allow_untested_optimizer", True)  # the run's optimizer is DeepSpeed's client optimizer
    if _offloads_optimizer(ds):  # ...and steps on the CPU under ZeRO-Offload, as HF's Trainer lets it
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds


BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def _check_own_sections(ds: dict[str, Any], path: Path) -> None:
    """The optimizer and schedule are the run's (optim, learning_rate, lr_scheduler_type, warmup):
    a DeepSpeed one as well would train with other settings than the config and the record say."""
    own = [key for key in ("optimizer", "scheduler") if key in ds]
    if own:
        raise UserError(
            f"deepspeed: {path}: {' and '.join(own)} section(s) found; tunepilot trains with the run config's "
            "optimizer and schedule (optim, learning_rate, lr_scheduler_type, warmup), so remove them and set "
            "those keys in the run config instead"
        )


def _mismatched(ds: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Batch sizes written as numbers must be the run's: the loop, not DeepSpeed, draws the batches."""
    return [
        f'{key}: {ds[key]} in the JSON, {values[key]} from the run config; write "auto" or the run\'s value'
        for key in BATCH_KEYS
        if key in ds and ds[key] != "auto" and ds[key] != values[key]
    ]


def _offloads_optimizer(ds: dict[str, Any]) -> bool:
    offload = ds.get("zero_optimization", {}).get("offload_optimizer") or {}
    return isinstance(offload, dict) and offload.get("device", "none") not in ("none", None)


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


def check_launchable(config: Any) -> None:
    """DeepSpeed asked for: installed, and its JSON readable and consistent with the run, said
    up-front, before data or a model is loaded (the plan's sizes are filled for real in the run)."""
    if config.parallel.resolved != "deepspeed":
        return
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "deepspeed: the deepspeed package is not installed; `pip install deepspeed`, or use fsdp "
            "(FSDP2) which needs nothing more"
        )
    deepspeed_config(
        config.parallel.deepspeed, config, world=config.train.nproc, total_steps=1, warmup_steps=0, hidden_size=1
    )
