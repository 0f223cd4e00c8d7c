"""What a log's neighbours say about the run: configured LR, batch, scheduler, LoRA rank, model.

LLaMA-Factory writes `training_args.yaml` (flat keys), PEFT writes `adapter_config.json`, tunepilot
writes `config.yaml` (sections), and HF Trainer writes `all_results.json`. They are looked for next
to the log and one directory up (a checkpoint folder's run directory). Anything unreadable is
skipped with a note: metadata only sharpens the advice, the curves carry the verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tunepilot.logs.base import RunLog
from tunepilot.logs.values import read_text, to_float, to_int

# Flat keys worth knowing, with the names other tools give them.
_KEYS = {
    "learning_rate": "learning_rate",
    "lr": "learning_rate",
    "lora_rank": "lora_rank",
    "r": "lora_rank",
    "lora_r": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "num_train_epochs": "num_train_epochs",
    "max_steps": "max_steps",
    "warmup_ratio": "warmup_ratio",
    "warmup_steps": "warmup_steps",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler_type",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "val_size": "val_size",
    "eval_steps": "eval_steps",
    "early_stopping_patience": "early_stopping_patience",
    "finetuning_type": "finetuning_type",
    "model_name_or_path": "model_name_or_path",
    "name_or_path": "model_name_or_path",
    "base_model_name_or_path": "model_name_or_path",
    "quantization_bit": "quantization_bit",
    "logging_steps": "logging_steps",
    "do_predict": "do_predict",
    "do_train": "do_train",
}
_NUMERIC = {
    "learning_rate",
    "lora_alpha",
    "lora_dropout",
    "num_train_epochs",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "val_size",
}
_INTEGER = {
    "lora_rank",
    "max_steps",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "eval_steps",
    "early_stopping_patience",
    "quantization_bit",
    "logging_steps",
}


def flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """Known keys from a flat or sectioned mapping, under tunepilot's flat names, values normalised."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub_key, sub_value in flatten(value).items():
                out.setdefault(sub_key, sub_value)
            continue
        name = _KEYS.get(key)
        if name is None or value is None:
            continue
        if name in _NUMERIC:
            value = to_float(value)
        elif name in _INTEGER:
            value = to_int(value)
        if value is not None:
            out[name] = value
    return out


def _load(path: Path) -> dict[str, Any] | None:
    try:
        text = read_text(path)
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_SIBLINGS = ("config.yaml", "training_args.yaml", "adapter_config.json", "all_results.json")


def apply_siblings(log: RunLog, directory: Path) -> None:
    """Fill the RunLog's metadata from the files next to the log (and one level up)."""
    for folder in (directory, directory.parent):
        for name in _SIBLINGS:
            path = folder / name
            if not path.is_file():
                continue
            data = _load(path)
            if data is None:
                log.notes.append(f"{path}: unreadable, ignored")
                continue
            _merge(log, name, data)
    _derive(log)


def _merge(log: RunLog, name: str, data: dict[str, Any]) -> None:
    if name == "all_results.json":
        for key in ("eval_loss", "train_loss"):
            value = to_float(data.get(key))
            if value is not None:
                log.extra.setdefault(f"final_{key}", value)
        if any(key.startswith("predict_") for key in data) and "train_loss" not in data:
            log.config.setdefault("do_predict", True)  # a prediction run's results
        return
    for key, value in flatten(data).items():
        log.config.setdefault(key, value)
    if name == "adapter_config.json":
        log.config.setdefault("finetuning_type", "lora")


def _derive(log: RunLog) -> None:
    config = log.config
    if log.method is None and config.get("finetuning_type") in ("lora", "full"):
        log.method = config["finetuning_type"]
    if log.learning_rate is None:
        log.learning_rate = config.get("learning_rate")
    log.lora_rank = log.lora_rank or config.get("lora_rank")
    log.lora_alpha = log.lora_alpha or config.get("lora_alpha")
    log.model = log.model or config.get("model_name_or_path")
    if log.num_params is None and log.model:
        log.num_params = params_from_name(str(log.model))
    if log.planned_steps is None and config.get("max_steps", -1) > 0:
        log.planned_steps = config["max_steps"]


_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def params_from_name(name: str) -> int | None:
    """7e9 from "Qwen2.5-7B-Instruct", 1.35e8 from "SmolLM2-135M"; None if the name gives no size.

    The last size in the name counts ("Mixtral-8x7B" -> 7B is wrong, so an "NxM" pattern is
    multiplied out first).
    """
    name = name.rsplit("/", 1)[-1]
    moe = re.search(r"(\d+)x(\d+(?:\.\d+)?)[bB]", name)
    if moe:
        return int(float(moe.group(1)) * float(moe.group(2)) * 1e9)
    sizes = _SIZE.findall(name)
    if not sizes:
        return None
    number, unit = sizes[-1]
    return int(float(number) * (1e9 if unit in "bB" else 1e6))
