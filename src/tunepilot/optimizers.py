"""The optimizer and LR schedule of a run, built in one place for every engine.

The standard engine steps one optimizer over its trainable parameters; each packed trial steps its
own over its slot of the LoRA bank. Both come from here, so a trial packed with others trains with
exactly the optimizer and schedule it would have alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler


def build_optimizer(
    params: list[torch.nn.Parameter], train: Any, *, fused: bool = False, decay_all: bool = False
) -> torch.optim.Optimizer:
    """AdamW with the config's betas and epsilon. Matrices decay; vectors (norms, biases) do not,
    as in transformers' Trainer. `decay_all`: every tensor decays (a packed trial's flat row of LoRA
    matrices). `fused`: one kernel for all parameters (CUDA)."""
    decay = [p for p in params if decay_all or p.ndim >= 2]
    no_decay = [p for p in params if not decay_all and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=train.learning_rate,
        betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_epsilon,
        **kwargs,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, train: Any, warmup_steps: int, total_steps: int):
    """transformers' schedule by name; `constant` keeps its warmup (constant_with_warmup)."""
    name = "constant_with_warmup" if train.lr_scheduler_type.startswith("constant") else train.lr_scheduler_type
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
