"""Derived training values, computed in this one place and printed at the start of every run.

The data order is a pure function of (seed, micro-batch index): epoch e uses the permutation drawn
from seed + e, cut into consecutive micro-batches. A resumed run therefore sees exactly the batches
an uninterrupted run would have seen, with no data-loader state to save.

An optimizer step is `accumulation` global micro-batches: gradient_accumulation_steps x nproc (the
data-parallel processes the config is planned for). W processes share them, rank r taking every
W-th from r, so 1 process and W processes train on the same global batches; a config planned for 8
GPUs run on one process accumulates all 8 x its micro-batches and keeps the effective batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

from tunepilot.config import TrainSettings
from tunepilot.errors import UserError


@dataclass(frozen=True)
class Plan:
    n_train: int
    micro_batch: int
    accumulation: int  # global micro-batches per optimizer step: gradient_accumulation_steps x nproc
    effective_batch: int  # micro_batch x accumulation, over all processes
    micro_batches_per_epoch: int
    steps_per_epoch: float
    total_steps: int
    warmup_steps: int
    eval_steps: int
    save_steps: int

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.n_train} examples, micro-batch {self.micro_batch} x {self.accumulation} micro-batches "
            f"= effective batch {self.effective_batch}; {self.total_steps} optimizer steps "
            f"({self.steps_per_epoch:.1f}/epoch), warmup {self.warmup_steps}, eval every {self.eval_steps}"
        )


def make_plan(train: TrainSettings, n_train: int) -> Plan:
    if n_train <= 0:
        raise UserError("data.train: no usable training examples after preparation; check the data and cutoff_len")
    micro, accum = train.per_device_train_batch_size, train.gradient_accumulation_steps * train.nproc
    per_epoch = math.ceil(n_train / micro)
    if train.max_steps > 0:
        total = train.max_steps
    else:
        total = max(1, math.ceil(math.floor(per_epoch * train.num_train_epochs) / accum))
    warmup = train.warmup_steps if train.warmup_steps > 0 else math.ceil(train.warmup_ratio * total)
    eval_steps = train.eval_steps or max(1, total // 10)
    return Plan(
        n_train=n_train,
        micro_batch=micro,
        accumulation=accum,
        effective_batch=micro * accum,
        micro_batches_per_epoch=per_epoch,
        steps_per_epoch=per_epoch / accum,
        total_steps=total,
        warmup_steps=min(warmup, total),
        eval_steps=eval_steps,
        save_steps=train.save_steps or eval_steps,
    )


def micro_batch_indices(plan: Plan, seed: int, micro_index: int) -> list[int]:
    """Example indices of global micro-batch `micro_index` (epochs repeat with fresh permutations)."""
    epoch, offset = divmod(micro_index, plan.micro_batches_per_epoch)
    order = _epoch_order(plan.n_train, seed, epoch)
    return order[offset * plan.micro_batch : (offset + 1) * plan.micro_batch].tolist()


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's permutation, drawn once per epoch rather than once per micro-batch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def step_indices(plan: Plan, seed: int, step: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The micro-batches of optimizer step `step` (1-based) that process `rank` of `world` trains."""
    if plan.accumulation % world:
        raise UserError(
            f"train.nproc: {plan.accumulation} micro-batches per step (gradient_accumulation_steps x "
            f"nproc) cannot be shared evenly by {world} processes; set gradient_accumulation_steps "
            f"and nproc so that {world} divides their product"
        )
    first = (step - 1) * plan.accumulation
    return [micro_batch_indices(plan, seed, m) for m in range(first + rank, first + plan.accumulation, world)]


def epoch_at(plan: Plan, step: int) -> float:
    return step * plan.accumulation / plan.micro_batches_per_epoch
