"""One trial inside a pack: its adapters' optimizer, schedule, data order and counters.

Everything that makes a trial itself lives here and nowhere else: the AdamW state over its own
LoRA weights, its LR schedule (transformers.get_scheduler, with its own warmup), its clipping norm,
its accumulation count and micro-batch size, and the seeded permutation its examples are drawn in.
The pack only decides which rows of the shared forward pass are this trial's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunepilot.engines.plan import epoch_at, plan_for, step_indices
from tunepilot.optimizers import build_optimizer, build_plan_scheduler


def report_steps(fractions: tuple[float, ...], steps: int) -> list[int]:
    """Optimizer steps at which to report: each fraction of the trial's own schedule, the last included."""
    return sorted({min(steps, max(1, round(f * steps))) for f in fractions} | {steps})


def trained_tokens(examples: list) -> int:
    """Positions that carry a loss after the causal shift (labels[1:] != -100), as the loss counts them."""
    return sum(sum(1 for y in e["labels"][1:] if y != -100) for e in examples)


class TrialState:
    """Optimizer, schedule and counters of one trial; `next_micro` and `after_backward` drive it.

    The schedule, the data order and the loss normalisation are the standard engine's
    (`tunepilot.engines.plan`, `engines/run.py`): optimizer step s trains on `step_indices(plan,
    seed, s)`, and each of its micro-batches contributes (sum of its token losses) / (trained
    tokens of the whole step), so accumulation gives the token mean over the step, as a single big
    batch would. Only the order in which the micro-batches run differs: one per packed step.
    """

    def __init__(
        self,
        number: int,
        slot: int,
        config: Any,
        row: torch.nn.Parameter,
        train_examples: list,
        eval_examples: list,
        fractions: tuple[float, ...],
    ):
        """`row`: the trial's slot of the LoRA bank, all its weights in one tensor (`LoraBank.row`)."""
        t = config.train
        self.number, self.slot, self.config = number, slot, config
        self.params = [row]
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self.plan = plan_for(config, train_examples)
        self.steps = self.plan.total_steps
        self.reports = report_steps(fractions, self.steps)
        self.max_grad_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
        # The row holds only LoRA matrices (flattened), which the standard engine's decay group holds
        # too: all of it decays. fused: one kernel for the trial's whole row on CUDA.
        self.optimizer = build_optimizer(self.params, t, fused=row.device.type == "cuda", decay_all=True)
        self.scheduler = build_plan_scheduler(self.optimizer, t, self.plan)
        self.step = 0  # optimizer steps done
        self.micro = 0  # micro-batches done
        self.tokens = 0  # trained tokens of finished steps
        self.input_tokens = 0  # all tokens of finished steps, prompts included
        self.window: list[list] = []  # the current step's micro-batches not yet run
        self.window_tokens = 0
        self.window_inputs = 0
        self.loss_sum: torch.Tensor | None = None  # summed token losses of the current step so far
        self.last_loss: float | None = None  # the last step's mean loss, once the engine has read it
        self.evaluated_at = 0  # the step of the last evaluation (its recorder keeps the values)

    def rebind(self, row: torch.nn.Parameter, relayout: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """The bank was re-laid out: step `row` from now on, with the AdamW moments moved to match."""
        old = self.params[0]
        state = self.optimizer.state.pop(old, {})
        self.params[0] = row
        self.optimizer.param_groups[0]["params"] = [row]
        self.optimizer.state[row] = {
            k: relayout(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()
        }

    def next_micro(self) -> list:
        if not self.window:
            batches = step_indices(self.plan, self.config.train.seed, self.step + 1)
            self.window = [[self.train_examples[i] for i in idx] for idx in batches]
            self.window_tokens = max(1, sum(trained_tokens(b) for b in self.window))
            self.window_inputs = sum(len(e["input_ids"]) for b in self.window for e in b)
        return self.window.pop(0)

    def dropout_key(self) -> tuple[int, int]:
        return (self.config.train.seed, self.micro)

    def after_backward(self, loss_sum: torch.Tensor) -> dict[str, Any] | None:
        """Count a micro-batch (its summed token loss, a device scalar); when its step's window is
        done clip, step, and return the step's log.

        Nothing here waits for the GPU: the log's loss and grad_norm are device tensors, which the
        engine reads for all trials at once, a step later."""
        self.micro += 1
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        if self.window:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        # In place: the gradient is a view of the bank's gradient (engines/packed/stack.py)
        self.optimizer.zero_grad(set_to_none=False)
        self.step += 1
        self.tokens += self.window_tokens
        self.input_tokens += self.window_inputs
        log = {
            "step": self.step,
            "loss": self.loss_sum / self.window_tokens,
            "grad_norm": norm,
            "lr": lr,
            "epoch": self.epoch,
            "tokens": self.tokens,
            "input_tokens": self.input_tokens,
        }
        self.loss_sum = None
        return log

    @property
    def epoch(self) -> float:
        return round(epoch_at(self.plan, self.step), 4)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    @property
    def at_report(self) -> bool:
        """Just finished a step that is a report point and not yet evaluated there."""
        return not self.window and self.step in self.reports and self.evaluated_at != self.step
