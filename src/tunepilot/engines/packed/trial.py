"""One trial inside a pack: its adapters' optimizer, schedule, data order and counters.

Everything that makes a trial itself lives here and nowhere else: the AdamW state over its own
LoRA weights, its LR schedule (transformers.get_scheduler, with its own warmup), its clipping norm,
its accumulation count and micro-batch size, and the seeded permutation its examples are drawn in.
The pack only decides which rows of the shared forward pass are this trial's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import get_scheduler

from tunepilot.engines.packed.lora import _mix_seed


def total_steps(train: Any, n_examples: int) -> int:
    """Optimizer steps: max_steps, else epochs x (micro-batches per epoch // accumulation), like HF."""
    if train.max_steps > 0:
        return train.max_steps
    micro = math.ceil(n_examples / train.per_device_train_batch_size)
    return max(1, math.ceil(train.num_train_epochs * max(1, micro // train.gradient_accumulation_steps)))


def warmup_steps(train: Any, steps: int) -> int:
    return train.warmup_steps if train.warmup_steps > 0 else math.ceil(train.warmup_ratio * steps)


def report_steps(fractions: tuple[float, ...], steps: int) -> list[int]:
    """Optimizer steps at which to report: each fraction of the trial's own schedule, the last included."""
    return sorted({min(steps, max(1, round(f * steps))) for f in fractions} | {steps})


class DataOrder:
    """An endless stream of micro-batches: a fresh seeded permutation each epoch."""

    def __init__(self, examples: list, micro_batch: int, seed: int):
        self.examples, self.micro_batch, self.seed = examples, micro_batch, seed
        self.epoch, self.pos, self.order = 0, 0, self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(len(self.examples), generator=gen).tolist()

    def next(self) -> list:
        if self.pos >= len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._perm(self.epoch)
        idx = self.order[self.pos:self.pos + self.micro_batch]
        self.pos += self.micro_batch  # the last micro-batch of an epoch may be smaller (no drop_last)
        return [self.examples[i] for i in idx]

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.pos / max(1, len(self.order))


class TrialState:
    """Optimizer, schedule and counters of one trial; `micro_step` and `maybe_step` drive it."""

    def __init__(self, number: int, slot: int, config: Any, params: list[torch.nn.Parameter],
                 train_examples: list, eval_examples: list, fractions: tuple[float, ...]):
        t = config.train
        self.number, self.slot, self.config = number, slot, config
        self.params = params
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self.accum = t.gradient_accumulation_steps
        self.max_grad_norm = t.max_grad_norm
        self.steps = total_steps(t, len(train_examples))
        self.reports = report_steps(fractions, self.steps)
        self.data = DataOrder(train_examples, t.per_device_train_batch_size, t.seed)
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                           eps=t.adam_epsilon, weight_decay=t.weight_decay)
        name = t.lr_scheduler_type
        warm = warmup_steps(t, self.steps)
        if name == "constant" and warm > 0:  # "constant" = no decay after warmup (config doc)
            name = "constant_with_warmup"
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=warm,
                                       num_training_steps=self.steps)
        self.step = 0  # optimizer steps done
        self.micro = 0  # micro-batches done
        self.tokens = 0  # trained tokens seen
        self.loss_acc = 0.0  # sum of this accumulation window's micro-batch losses
        self.last_loss: float | None = None
        self.evals: list[tuple[int, float]] = []

    def dropout_key(self) -> tuple[int, int]:
        return (self.config.train.seed, self.micro)

    def after_backward(self, loss: float, tokens: int) -> dict[str, float] | None:
        """Count a micro-batch; at the end of an accumulation window clip, step, and return the log."""
        self.micro += 1
        self.tokens += tokens
        self.loss_acc += loss
        if self.micro % self.accum:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm if self.max_grad_norm > 0
                                              else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last_loss = self.loss_acc / self.accum
        self.loss_acc = 0.0
        return {"loss": self.last_loss, "grad_norm": float(norm), "lr": lr}

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    @property
    def at_report(self) -> bool:
        return self.micro % self.accum == 0 and self.step in self.reports and \
            (not self.evals or self.evals[-1][0] != self.step)
