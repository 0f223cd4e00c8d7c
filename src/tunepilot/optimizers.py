"""The optimizer and LR schedule of a run, built in one place for every engine.

The standard engine steps one optimizer over its trainable parameters; each packed trial steps its
own over its slot of the LoRA bank. Both come from here, so a trial packed with others trains with
exactly the optimizer and schedule it would have alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler

from tunepilot.config_keys import OPTIMIZERS
from tunepilot.errors import UserError


def build_optimizer(
    params: list[torch.nn.Parameter], train: Any, *, fused: bool = False, decay_all: bool = False
) -> torch.optim.Optimizer:
    """The optimizer named by `train.optim` (HF names; default adamw_torch) with the config's LR,
    betas, epsilon and weight decay. Matrices decay; vectors (norms, biases) do not, as in
    transformers' Trainer. `decay_all`: every tensor decays (a packed trial's flat row of LoRA
    matrices). `fused`: AdamW as one kernel for all parameters (as `optim: adamw_torch_fused`)."""
    decay = [p for p in params if decay_all or p.ndim >= 2]
    no_decay = [p for p in params if not decay_all and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    name = getattr(train, "optim", None) or "adamw_torch"
    adam = {"lr": train.learning_rate, "betas": (train.adam_beta1, train.adam_beta2), "eps": train.adam_epsilon}
    if name in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(groups, **adam, **({"fused": True} if fused or name.endswith("fused") else {}))
    if name == "sgd":  # as transformers' Trainer: plain SGD at the config's LR (no momentum)
        return torch.optim.SGD(groups, lr=train.learning_rate)
    if name == "adafactor":  # as transformers' Trainer: an external LR, no relative step or parameter scaling
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=train.learning_rate, scale_parameter=False, relative_step=False)
    return _bnb_optimizer(name, groups, adam)


def _bnb_optimizer(name: str, groups: list[dict], adam: dict[str, Any]) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW variants (8-bit states; paged: states move to CPU under memory pressure).
    The config refuses these names when bitsandbytes does not import; this is the second line."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise UserError(f"train.optim: {name} needs bitsandbytes; pip install bitsandbytes, or use adamw_torch") from e
    classes = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "adamw_bnb_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "paged_adamw": bnb.optim.PagedAdamW,
    }
    if name not in classes:
        raise UserError(f"train.optim: {name!r} is not supported; use one of {', '.join(OPTIMIZERS)}")
    return classes[name](groups, **adam)


def build_scheduler(optimizer: torch.optim.Optimizer, train: Any, warmup_steps: int, total_steps: int):
    """transformers' schedule by name, with `train.lr_scheduler_kwargs` (cosine: num_cycles;
    cosine_with_min_lr: min_lr or min_lr_rate, checked by the config). `constant` keeps its warmup
    (constant_with_warmup)."""
    name = "constant_with_warmup" if train.lr_scheduler_type.startswith("constant") else train.lr_scheduler_type
    kwargs = dict(getattr(train, "lr_scheduler_kwargs", None) or {})
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs or None,
    )


def build_plan_scheduler(optimizer: torch.optim.Optimizer, train: Any, plan: Any):
    """The run's schedule: `build_scheduler` over the plan, or, for phased data, one schedule per
    phase (its own warmup, decay and peak LR), joined into one LambdaLR by optimizer step."""
    if not plan.phases:
        return build_scheduler(optimizer, train, plan.warmup_steps, plan.total_steps)
    factors = [_schedule_factor(train, p.warmup_steps, p.steps) for p in plan.phases]

    def factor(index: int) -> float:  # LambdaLR's index: optimizer steps taken so far
        phase = plan.phase_of(index + 1)
        scale = phase.learning_rate / train.learning_rate
        return scale * factors[phase.index](index + 1 - phase.first_step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _schedule_factor(train: Any, warmup_steps: int, total_steps: int):
    """transformers' multiplier function of one schedule (taken from a scheduler on a throwaway
    optimizer, so the phase schedules are exactly the named ones)."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return build_scheduler(probe, train, warmup_steps, total_steps).lr_lambdas[0]
