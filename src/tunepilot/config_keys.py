"""Config keys that other tools define and tunepilot either supports under their own name or refuses up-front.

A key that changes training is supported or refused when the config is read, before any data or
model is loaded; only keys with no effect on the result are ignored (with a warning, by
`tunepilot.config`). The checks live here, next to the names they check, and `tunepilot.config`
calls them from its validators:

- `optim`: the optimizers torch.optim and (where it imports) bitsandbytes offer, by HF name.
- `lr_scheduler_kwargs`: transformers' scheduler options, checked per scheduler type.
- `quantization_method`: bitsandbytes only.
- `template`: LLaMA-Factory's template names mapped to tunepilot's named templates.
- keys of LLaMA-Factory / HF features tunepilot does not have (`neat_packing`, `loraplus_lr_ratio`,
  ...): accepted at their no-op value, refused otherwise with what to do instead.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

# HF `optim` names -> what builds them (tunepilot.optimizers). bitsandbytes names need the package.
TORCH_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor")
BNB_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "paged_adamw")
OPTIMIZERS = TORCH_OPTIMIZERS + BNB_OPTIMIZERS


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def optimizer_name(v: Any) -> Any:
    if v is None:
        return "adamw_torch"
    if not isinstance(v, str):
        return v  # pydantic reports the type
    name = v.strip().lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {v!r} is not supported; use one of {', '.join(OPTIMIZERS)}")
    if name in BNB_OPTIMIZERS and not bitsandbytes_available():
        raise ValueError(
            f"{name} is a bitsandbytes optimizer and bitsandbytes is not installed; "
            "pip install bitsandbytes (CUDA), or use adamw_torch"
        )
    return name


# Scheduler options transformers' get_scheduler accepts, per type (scheduler_specific_kwargs).
SCHEDULER_KWARGS: dict[str, tuple[str, ...]] = {
    "cosine": ("num_cycles",),
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "linear": (),
    "constant": (),
    "constant_with_warmup": (),
}


def scheduler_kwargs_json(v: Any) -> Any:
    """HF TrainingArguments accepts lr_scheduler_kwargs as a JSON string too ('{"min_lr": 1e-5}')."""
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            return json.loads(v) if v.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"not a mapping or a JSON object ({e.msg}); write e.g. {{min_lr_rate: 0.1}}") from e
    return v


def check_scheduler_kwargs(scheduler: str, kwargs: dict[str, float]) -> None:
    allowed = SCHEDULER_KWARGS.get(scheduler, ())
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        what = f"takes {', '.join(allowed)}" if allowed else "takes no options"
        raise ValueError(f"lr_scheduler_kwargs {unknown} do not apply: lr_scheduler_type {scheduler} {what}")
    if scheduler == "cosine_with_min_lr":
        given = [k for k in ("min_lr", "min_lr_rate") if k in kwargs]
        if len(given) != 1:
            raise ValueError(
                "cosine_with_min_lr needs exactly one of lr_scheduler_kwargs.min_lr (an absolute LR) "
                "or min_lr_rate (a share of learning_rate), e.g. lr_scheduler_kwargs: {min_lr_rate: 0.1}"
            )
        rate = kwargs.get("min_lr_rate")
        if rate is not None and not 0 <= rate < 1:
            raise ValueError(f"lr_scheduler_kwargs.min_lr_rate {rate} must be in [0, 1)")
        if kwargs.get("min_lr", 0) < 0:
            raise ValueError("lr_scheduler_kwargs.min_lr must be >= 0")


def quantization_method(v: Any) -> Any:
    if v is None:
        return "bitsandbytes"
    if isinstance(v, str) and v.strip().lower() in ("bnb", "bitsandbytes"):
        return "bitsandbytes"
    raise ValueError(
        f"quantization method {v!r} is not supported; tunepilot quantizes with bitsandbytes "
        "(quantization_method: bnb with quantization_bit: 4 or 8); remove the key or use bnb"
    )


# LLaMA-Factory template names (src/llamafactory/data/template.py) -> tunepilot's named templates with
# the same turn format and masking (assistant content + end-of-turn trains). `qwen` and `smollm2`
# keep LLaMA-Factory's default system prompt, so they are registered as templates of their own.
LLAMAFACTORY_TEMPLATES = {
    "chatml": "chatml",
    "yi": "chatml",
    "smollm": "chatml",
    "qwen3_nothink": "chatml",
    "qwen": "qwen",
    "smollm2": "smollm2",
    "llama3": "llama3",
    "llama2": "llama2",
    "mistral": "mistral",
    "vicuna": "vicuna",
    "gemma": "gemma",
    "gemma2": "gemma",
    "phi": "phi3",
    "alpaca": "alpaca",
    "zephyr": "zephyr",
    "default": None,
    "empty": None,
}
# LLaMA-Factory names with no equivalent here: refused with a pointer to `auto` (the model's own
# chat template). A reasoning template (qwen3, deepseekr1) inserts <think> blocks we do not render.
LLAMAFACTORY_OTHER = {
    "qwen3": "a reasoning template (<think> blocks)",
    "deepseekr1": "a reasoning template (<think> blocks)",
    "deepseek3": "",
    "deepseek": "",
    "glm4": "",
    "chatglm3": "",
    "cohere": "",
    "falcon": "",
    "llama4": "",
    "phi4": "",
    "mistral_small": "",
    "ministral": "",
    "granite3": "",
    "intern2": "",
    "baichuan2": "",
    "openchat": "",
    "solar": "",
    "starchat": "",
    "gpt_oss": "",
}


def template_name(v: Any) -> Any:
    from tunepilot.data.templates import TEMPLATES

    if not isinstance(v, str) or v == "auto" or v in TEMPLATES:
        return v
    mapped = LLAMAFACTORY_TEMPLATES.get(v, "")
    if mapped:
        return mapped
    known = ", ".join(["auto", *sorted(TEMPLATES)])
    if mapped is None or v in LLAMAFACTORY_OTHER:
        what = f"is {LLAMAFACTORY_OTHER[v]}" if LLAMAFACTORY_OTHER.get(v) else "has a turn format"
        raise ValueError(
            f"LLaMA-Factory's template {v!r} {what} that tunepilot has no equivalent for; use "
            f"template: auto (the model's own chat template) or one of {known}"
        )
    mapped_names = ", ".join(sorted(k for k, t in LLAMAFACTORY_TEMPLATES.items() if t))
    raise ValueError(
        f"unknown template {v!r}; use auto (the model's own chat template) or one of {known} "
        f"(LLaMA-Factory's {mapped_names} are mapped)"
    )


# LLaMA-Factory's mix_strategy values: all mix the datasets into one shuffled stream (stacked); its
# interleave_probs become data.mix_weights. One epoch is as many examples as the datasets hold.
MIX_NAMES = {"concat": "stacked", "interleave_under": "stacked", "interleave_over": "stacked"}


MIX_OF_LIST = {"mix_weights": "stacked", "phase_steps": "phased", "phase_learning_rates": "phased"}


def mix_name(v: Any) -> Any:
    return MIX_NAMES.get(v, v) if isinstance(v, str) else v


def number_list(v: Any) -> Any:
    """A list written as LLaMA-Factory writes interleave_probs: "0.7,0.3"."""
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


def mixture_problems(data: Any) -> list[str]:
    """What is wrong with data.mix and its lists, given the datasets named in data.train."""
    from tunepilot.data.sources import dataset_names

    n = len(dataset_names(data.train))
    problems = []
    lists = {key: getattr(data, key) for key in MIX_OF_LIST}
    for key, values in lists.items():
        if values is not None and len(values) != n:
            problems.append(f"data.{key}: {len(values)} values for {n} dataset(s) in data.train; give one per dataset")
        if values is not None and any(v <= 0 for v in values):
            problems.append(f"data.{key}: {values} has a value <= 0; every value must be positive")
    for key in (k for k, v in lists.items() if v is not None and MIX_OF_LIST[k] != data.mix):
        problems.append(f"data.{key} applies to mix: {MIX_OF_LIST[key]}, but data.mix is {data.mix}; remove it")
    if data.mix == "phased" and n < 2:
        problems.append(
            "data.mix: phased trains datasets one after another, but data.train names one; "
            "name two or more (comma-separated) or use mix: stacked"
        )
    return problems


# Keys of features tunepilot does not have: the value that means "off" is accepted (it changes
# nothing); any other value is refused here, before work starts, with what to do instead.
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "neat_packing": (
        (False, None),
        "packing without cross-attention between packed examples is not supported; "
        "use packing: true (examples share attention within a sequence) or remove it",
    ),
    "resume_from_checkpoint": (
        (None, False, ""),
        "resume a run with `tunepilot train CONFIG --resume` (it continues from output_dir/checkpoint)",
    ),
    "bias": (("none", None), "only bias: none (adapters without bias terms) is supported"),
    "loraplus_lr_ratio": ((None, 0, 0.0), "LoRA+ is not supported; remove it"),
    "pissa_init": ((False, None), "PiSSA initialisation is not supported; remove it"),
    "use_unsloth": ((False, None), "unsloth kernels are not used by tunepilot; remove it"),
    "use_galore": ((False, None), "GaLore is not supported; remove it"),
    "use_badam": ((False, None), "BAdam is not supported; remove it"),
    "use_apollo": ((False, None), "APOLLO is not supported; remove it"),
    "use_llama_pro": ((False, None), "LLaMA Pro is not supported; remove it"),
    "label_smoothing_factor": ((None, 0, 0.0), "label smoothing is not supported; remove it"),
    "rope_scaling": ((None,), "RoPE scaling is not supported; remove it (or set it in the model's config.json)"),
    "enable_liger_kernel": ((False, None), "Liger kernels are not used by tunepilot; remove it"),
    "streaming": ((False, None), "streaming datasets are not supported; records are read from local files"),
    "group_by_length": ((False, None), "batches follow the seeded data order; group_by_length is not supported"),
    "additional_target": ((None,), "use lora_target (or full fine-tuning) instead of additional_target"),
}


def special_key(key: str, value: Any) -> tuple[bool, str | None]:
    """(handled, problem) for a flat key of REFUSED: handled with no problem at its no-op value."""
    if key not in REFUSED:
        return False, None
    ok, why = REFUSED[key]
    if value in ok:
        return True, None
    return True, f"{key}: {value!r} is refused: {why}"
