"""Load a base model and tokenizer (local dir, hub id, or GGUF file) and apply the fine-tuning method.

GGUF files are dequantized by transformers on every load (~15-25 s for a 135M model on CPU), so the
first load converts the file once to a safetensors directory in the cache and later loads read that
(~2 s). dtype `auto` is bf16 on GPUs that support it and fp32 elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from pathlib import Path
from typing import Any

import torch

from tunepilot.config import MethodSettings, ModelSettings
from tunepilot.errors import UserError
from tunepilot.io import atomic_write_dir, clean_stale_temps
from tunepilot.modelinfo import check_gguf_magic


def cache_root() -> Path:
    return Path(os.environ.get("TUNEPILOT_CACHE", Path.home() / ".cache" / "tunepilot"))


def resolve_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was requested but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(preference)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def converted_gguf_dir(gguf_path: str | Path) -> Path:
    """A safetensors copy of a GGUF model (weights dequantized, tokenizer included), made once."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise UserError(f"model: GGUF file {gguf_path} not found; check model.name_or_path / gguf_file")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    check_gguf_magic(gguf_path)
    clean_stale_temps(target.parent)  # a conversion killed midway left its temporary directory here
    try:  # converted in a temporary directory inside the cache, renamed into place when complete
        atomic_write_dir(target, lambda tmp: _convert_gguf(gguf_path, tmp))
    except (ValueError, KeyError, IndexError, struct.error) as e:  # what the GGUF parser raises on a bad file
        raise UserError(
            f"{gguf_path}: not a readable GGUF model ({type(e).__name__}: {e}); "
            "check the file (a complete download?) or give a model directory"
        ) from e
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # A model loaded from GGUF is flagged as quantized and refuses save_pretrained; its weights are
    # already dequantized, so copy them into a plain model built from the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_source(settings: ModelSettings) -> str:
    """The directory or hub id that from_pretrained reads (GGUF files come through the cache)."""
    if settings.gguf_file:
        return str(converted_gguf_dir(Path(settings.name_or_path) / settings.gguf_file))
    return settings.name_or_path


def load_tokenizer(settings: ModelSettings):
    from transformers import AutoTokenizer

    source = settings.tokenizer or model_source(settings)
    key = "model.tokenizer" if settings.tokenizer else "model"
    _check_local_dir(source, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=settings.trust_remote_code, cache_dir=settings.cache_dir
        )
    except OSError as e:
        raise UserError(_not_found(source, e, key)) from e
    except ValueError as e:  # a local directory whose tokenizer files are broken or missing
        if not Path(source).exists():
            raise
        raise UserError(_not_found(source, e, key)) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(settings: ModelSettings, device: torch.device):
    """The base causal LM on `device` in the resolved dtype (4/8-bit for QLoRA on CUDA)."""
    from transformers import AutoModelForCausalLM

    source = model_source(settings)
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(settings.dtype, device),
        "cache_dir": settings.cache_dir,
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.quantization_bit:
        kwargs["quantization_config"] = _bnb_config(settings, device, kwargs["dtype"])
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise UserError(_not_found(source, e)) from e
    if not settings.quantization_bit:
        model.to(device)
    return model


def _check_local_dir(source: str, key: str) -> None:
    """A local directory without a single file is a mistake to name now, not a library error later."""
    path = Path(source)
    if path.is_dir() and not any(p.is_file() for p in path.iterdir()):
        raise UserError(
            f"{key}: {source} is an empty directory; give a Hugging Face model directory "
            "(config.json, weights, tokenizer files), a .gguf file or a hub id"
        )


def _not_found(source: str, error: Exception, key: str = "model") -> str:
    what = "tokenizer" if key == "model.tokenizer" else "model"
    if Path(source).exists():
        return f"{key}: could not load {source} ({error}); is it a Hugging Face {what} directory?"
    local = "a local tokenizer directory" if what == "tokenizer" else "a local model directory, a .gguf file,"
    return (
        f"{key}: {source!r} is neither a local directory nor a reachable hub {what} ({type(error).__name__}); "
        f"pass {local} or a hub id with network access"
    )


def _bnb_config(settings: ModelSettings, device: torch.device, compute_dtype: torch.dtype):
    if device.type != "cuda":
        raise UserError(
            "model.quantization_bit: QLoRA needs a CUDA GPU; remove quantization_bit to train "
            "in full precision on this machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("model.quantization_bit: QLoRA needs bitsandbytes; pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if settings.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def lora_config(method: MethodSettings):
    from peft import LoraConfig

    targets = method.lora_target
    return LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.alpha,
        lora_dropout=method.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        use_rslora=method.use_rslora,
        use_dora=method.use_dora,
        task_type="CAUSAL_LM",
        bias="none",
    )


def apply_method(model, method: MethodSettings, model_settings: ModelSettings):
    """LoRA / QLoRA: wrap with PEFT (only adapter weights train). Full: every weight trains.
    `method.neftune_noise_alpha`: NEFTune noise on the input embeddings in train mode (set_neftune)."""
    set_neftune(model, method.neftune_noise_alpha)
    if model_settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method.finetuning_type == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if model_settings.quantization_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_settings.gradient_checkpointing)
    if model_settings.gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, lora_config(method))
    except ValueError as e:
        raise UserError(f"method.lora_target: {method.lora_target} does not match this model's modules ({e})") from e


def set_neftune(model, alpha: float | None) -> None:
    """NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): add
    uniform noise of scale alpha / sqrt(seq_len x hidden) to the input embeddings while the model is in
    train mode; evaluation and generation (eval mode) see clean embeddings. This is transformers'
    own forward hook (`neftune_post_forward_hook`, what Trainer registers for `neftune_noise_alpha`)
    on the input embedding module, PyTorch's public injection point.

    Idempotent per module: a base model shared by a sweep's trials keeps one hook at most, set to
    this trial's alpha, and removed when a trial asks for none."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    embeddings = model.get_input_embeddings()
    handle = getattr(embeddings, "_tunepilot_neftune", None)
    if handle is not None:
        handle.remove()
        embeddings._tunepilot_neftune = None
    if alpha is None:
        return
    embeddings.neftune_noise_alpha = float(alpha)
    embeddings._tunepilot_neftune = embeddings.register_forward_hook(neftune_post_forward_hook)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights being trained (LoRA adapters, or everything for full fine-tuning)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise UserError(f"checkpoint does not match this model (e.g. {missing[0]}); was the config changed?")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
