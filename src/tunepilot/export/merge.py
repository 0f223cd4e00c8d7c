"""Merge a run's adapter into its base model: W' = W + scale * B @ A, by PEFT's `merge_and_unload`.

The merge is done in float32 on the CPU (exact enough that the merged logits equal base + adapter
within float rounding) and cast to the export dtype afterwards. A QLoRA run's base is dequantized
first: loaded in 4/8 bit as it was trained and dequantized by transformers (`model.dequantize()`)
where bitsandbytes and a GPU are here; elsewhere the full-precision base is loaded instead, and the
model card says so. A GGUF base is dequantized on load (`tunepilot.models`).

Before anything is merged, the adapter is checked against the base: every adapted module must exist
in the base with the shapes the adapter was trained on. A different base is refused (exit 2).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunepilot.config import ModelSettings
from tunepilot.errors import UserError


@dataclass
class Merged:
    model: Any
    tokenizer: Any
    base: str  # the base model as given or recorded
    notes: list[str] = field(default_factory=list)


def base_settings(recorded: ModelSettings, base: str | None) -> ModelSettings:
    """The run's model settings, with `--base` in place of the recorded base where given."""
    if base is None:
        return recorded
    path = Path(base)
    gguf = path.name if base.endswith(".gguf") else None
    name = str(path.parent) if gguf else base
    return recorded.model_copy(update={"name_or_path": name, "gguf_file": gguf, "tokenizer": recorded.tokenizer})


def load_full(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def load_base(settings: ModelSettings, notes: list[str]):
    from tunepilot.models import load_model

    cpu = torch.device("cpu")
    fp32 = settings.model_copy(update={"dtype": "float32", "quantization_bit": None})
    if not settings.quantization_bit:
        return load_model(fp32, cpu)
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        quantized = load_model(settings, torch.device("cuda"))
        notes.append(
            f"QLoRA: the {settings.quantization_bit}-bit base the adapter was trained on was dequantized "
            "before the merge"
        )
        return quantized.dequantize().to(device=cpu, dtype=torch.float32)
    notes.append(
        f"QLoRA: merged into the full-precision base (the {settings.quantization_bit}-bit base needs "
        "bitsandbytes and a GPU to be rebuilt; outputs may differ slightly from the quantized training "
        "model)"
    )
    return load_model(fp32, cpu)


def check_compatible(model, adapter_dir: Path, base: str, recorded: str) -> None:
    """Every module the adapter adapts exists in `model` with the adapter's in/out features."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors; is this a PEFT adapter directory?")
    modules = dict(model.named_modules())
    problems: list[str] = []
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = _module_name(key)
            module = modules.get(name)
            shape = f.get_slice(key).get_shape()
            if module is None or not hasattr(module, "in_features"):
                problems.append(f"{name}: adapted by the adapter, not a linear layer of this base")
            elif ".lora_A." in key and shape[1] != module.in_features:
                problems.append(f"{name}: adapter expects {shape[1]} input features, the base has {module.in_features}")
            elif ".lora_B." in key and shape[0] != module.out_features:
                problems.append(
                    f"{name}: adapter expects {shape[0]} output features, the base has {module.out_features}"
                )
            if len(problems) >= 3:
                break
    if problems:
        given = "" if base == recorded else f" (the run trained on {recorded})"
        raise UserError(
            f"{adapter_dir}: this adapter does not fit the base model {base}{given}; pass --base with "
            "the model the run was trained on",
            problems=problems,
        )


def _module_name(key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    name = key.split(".lora_")[0]
    return name.removeprefix("base_model.model.")


def recorded_base(adapter_dir: Path) -> str | None:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError):
        return None


def merge(source, base: str | None = None) -> Merged:
    """The merged model (float32, CPU) and the run's tokenizer, or the full fine-tuned model."""
    from tunepilot.models import load_tokenizer

    recorded = source.config.model
    settings = base_settings(recorded, base)
    notes: list[str] = []
    if source.full_model is not None:
        return Merged(load_full(source.full_model), load_tokenizer(recorded), recorded.name_or_path, notes)
    name = base or _recorded_name(recorded)
    check_compatible(skeleton(settings), source.adapter, name, _recorded_name(recorded))  # before the long load
    tokenizer = tokenizer_for(source, base)
    model = load_base(settings, notes)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(source.adapter))
    merged = peft_model.merge_and_unload()
    return Merged(merged.eval(), tokenizer, name, notes)


def tokenizer_for(source, base: str | None):
    """The run's tokenizer: its own `model.tokenizer`, else the base's (the `--base` one where given)."""
    from tunepilot.models import load_tokenizer

    recorded = source.config.model
    return load_tokenizer(recorded if recorded.tokenizer or base is None else base_settings(recorded, base))


def _recorded_name(settings: ModelSettings) -> str:
    if settings.gguf_file:
        return str(Path(settings.name_or_path) / settings.gguf_file)
    return settings.name_or_path


def adapter_base_matches(source, base: str | None) -> None:
    """An adapter-only export checks its base as a merge does (shapes), without merging."""
    if source.adapter is None:
        raise UserError(
            f"{source.run_dir}: --adapter-only needs a LoRA run (adapter/); this run fine-tuned "
            "the whole model (model/), export it without --adapter-only"
        )
    recorded = source.config.model
    model = skeleton(base_settings(recorded, base))
    check_compatible(model, source.adapter, base or _recorded_name(recorded), _recorded_name(recorded))


def skeleton(settings: ModelSettings):
    """The base's modules with their shapes and no weights (meta device): enough to check an adapter."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunepilot.models import model_source

    source = model_source(settings)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=settings.trust_remote_code, cache_dir=settings.cache_dir
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"base model {source!r}: no model config there ({e}); pass --base with a model "
            "directory, a .gguf file or a hub id"
        ) from e
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=settings.trust_remote_code)
