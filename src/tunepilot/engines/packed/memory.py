"""Memory estimates for packing: what one trial adds, how many fit, and whether the next one fits.

A trial adds its adapter state (fp32 weights, grads and two AdamW moments: 16 bytes a LoRA weight)
and the activations its micro-batch keeps for the backward. Per token and decoder layer, a
Llama/Qwen layer keeps about 10 hidden-size and 4.5 intermediate-size vectors in the compute dtype
(norm inputs with their fp32 upcasts, q/k/v, rotary outputs, attention output, gate/up and their
product): measured by summing the storages autograd saves (saved_tensors_hooks) for Llama layers of
hidden 256/512 and intermediate 1,024/2,048, which gave 9 H + 4.25 I, rounded up here. With
activation checkpointing only the layer input stays, plus one layer's worth recomputed at a time.
The lm_head + cross-entropy chunk (bf16 logits, fp32 copy and its grad) is
transient and shared. These are estimates for refusing hopeless trials and picking K before
starting; the benchmark prints them next to measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024**3


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> Shape:
        c = model.config
        dtype = next(model.parameters()).dtype
        return cls(
            c.hidden_size,
            getattr(c, "intermediate_size", 4 * c.hidden_size),
            c.num_hidden_layers,
            c.vocab_size,
            torch.finfo(dtype).bits // 8,
        )


def activation_bytes(shape: Shape, tokens: int, checkpointing: bool) -> int:
    per_layer = int(shape.dtype_bytes * (10 * shape.hidden + 4.5 * shape.intermediate))
    if checkpointing:
        return tokens * (shape.layers * shape.dtype_bytes * shape.hidden + per_layer)
    return tokens * shape.layers * per_layer


def trial_bytes(shape: Shape, lora_weights: int, micro_batch: int, seq_len: int, checkpointing: bool) -> int:
    """What one trial adds to the pack: adapter state plus its micro-batch's kept activations."""
    return 16 * lora_weights + activation_bytes(shape, micro_batch * seq_len, checkpointing)


def shared_bytes(shape: Shape, chunk_rows: int) -> int:
    """Transient memory every step needs once: one lm_head + CE chunk, plus 1 GiB of workspace."""
    return chunk_rows * shape.vocab * (shape.dtype_bytes + 8) + GIB


def memory_budget(device: torch.device, fraction: float = 0.92) -> int | None:
    """Bytes the pack may use on top of what is allocated now (base weights); None on CPU: no limit."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(min(free, total * fraction - torch.cuda.memory_allocated(device)))


def slots_that_fit(budget: int | None, per_trial: int, shared: int, cap: int = 16, cpu_default: int = 4) -> int:
    """K chosen from memory: as many trials of this shape as fit, at least 1, at most `cap`."""
    if budget is None:
        return cpu_default
    return max(1, min(cap, (budget - shared) // max(1, per_trial)))
