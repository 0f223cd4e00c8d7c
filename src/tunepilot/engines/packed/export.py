"""A packed trial's adapter as a normal PEFT adapter folder.

`adapter_config.json` is written by PEFT's own `LoraConfig.save_pretrained` and the weights under
the key names PEFT saves (`base_model.model.<module>.lora_A.weight`), so
`PeftModel.from_pretrained(base, folder)` loads it like any adapter trained with PEFT.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig
from safetensors.torch import save_file

from tunepilot.engines.packed.inject import adapter_state
from tunepilot.io import atomic_write_dir


def export_adapter(
    path: str | Path, wrapped: dict, slot: int, targets: list[str], method, base_model: str, state: dict | None = None
) -> Path:
    """Write slot's adapter (or `state`, a saved copy of it) to `path` atomically; `method` is the
    trial's MethodSettings."""
    leaves = sorted({n.rpartition(".")[2] for n in targets})
    if set(targets) != {n for n in wrapped if n.rpartition(".")[2] in leaves}:
        leaves = list(targets)  # only some layers of a kind: name each one, so PEFT adapts exactly those
    config = LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.alpha,
        lora_dropout=method.lora_dropout,
        target_modules=leaves,
        use_rslora=method.use_rslora,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    state = state if state is not None else adapter_state(wrapped, slot)

    def fill(tmp: Path) -> None:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})

    atomic_write_dir(path, fill)
    return Path(path)
