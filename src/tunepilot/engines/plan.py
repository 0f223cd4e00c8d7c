"""Derived training values, computed in this one place and printed at the start of every run.

The data order is a pure function of (seed, micro-batch index): epoch e uses the permutation drawn
from seed + e, cut into consecutive micro-batches. A resumed run therefore sees exactly the batches
an uninterrupted run would have seen, with no data-loader state to save.

An optimizer step is `accumulation` global micro-batches: gradient_accumulation_steps x nproc (the
data-parallel processes the config is planned for). W processes share them, rank r taking every
W-th from r, so 1 process and W processes train on the same global batches; a config planned for 8
GPUs run on one process accumulates all 8 x its micro-batches and keeps the effective batch.

Several training datasets (`data.mix`, a `Mixture`) change only which rows an epoch holds:
- stacked, no weights: the datasets are one pool, drawn as above;
- stacked with weights: an epoch holds as many examples as all datasets, dataset i giving its share
  w_i of them, drawn from its own endless sequence of permutations (so no example of a dataset
  repeats before all of it is seen), then shuffled together;
- phased: phase p trains dataset p alone for its steps, with its own permutations; the schedule
  restarts in each phase (`optimizers.build_plan_scheduler`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tunepilot.config import TrainSettings
from tunepilot.errors import UserError


@dataclass(frozen=True)
class Mixture:
    """How several training datasets are drawn (from data.mix and the prepared rows)."""

    mix: str  # stacked | phased
    sizes: tuple[int, ...]  # rows of each dataset; rows are grouped by dataset, in the order named
    weights: tuple[float, ...] | None = None  # stacked: each dataset's share of an epoch
    phase_steps: tuple[int, ...] | None = None
    phase_learning_rates: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Phase:
    """One dataset trained alone (data.mix: phased), from optimizer step `first_step` on."""

    index: int
    first_row: int
    rows: int
    first_step: int
    steps: int
    warmup_steps: int
    learning_rate: float
    micro_batches_per_epoch: int


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
    mix: str = "stacked"
    quotas: tuple[int, ...] = ()  # stacked with weights: rows each dataset gives an epoch
    sizes: tuple[int, ...] = ()  # rows of each dataset, when several are mixed
    phases: tuple[Phase, ...] = field(default=())

    def phase_of(self, step: int) -> Phase | None:
        """The phase optimizer step `step` (1-based) trains in; None when not phased."""
        for phase in self.phases:
            if step < phase.first_step + phase.steps:
                return phase
        return self.phases[-1] if self.phases else None

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.n_train} examples, micro-batch {self.micro_batch} x {self.accumulation} micro-batches "
            f"= effective batch {self.effective_batch}; {self.total_steps} optimizer steps "
            f"({self.steps_per_epoch:.1f}/epoch), warmup {self.warmup_steps}, eval every {self.eval_steps}"
            + self._describe_mix()
        )

    def _describe_mix(self) -> str:
        if self.phases:
            parts = [f"{p.rows} rows for {p.steps} steps at lr {p.learning_rate:g}" for p in self.phases]
            return "; phased: " + ", then ".join(parts)
        if self.quotas:
            shares = [f"{q} of {n} rows" for q, n in zip(self.quotas, self.sizes, strict=True)]
            return "; stacked per epoch: " + ", ".join(shares)
        return ""


def make_plan(train: TrainSettings, n_train: int, mixture: Mixture | None = None) -> Plan:
    if n_train <= 0:
        raise UserError("data.train: no usable training examples after preparation; check the data and cutoff_len")
    micro, accum = train.per_device_train_batch_size, train.gradient_accumulation_steps * train.nproc
    quotas = _quotas(mixture, n_train) if mixture is not None and mixture.weights else ()
    per_epoch = math.ceil((sum(quotas) or n_train) / micro)
    phases = _phases(train, mixture, micro, accum) if mixture is not None and mixture.mix == "phased" else ()
    if phases:
        total = sum(p.steps for p in phases)
    elif train.max_steps > 0:
        total = train.max_steps
    else:
        total = _epoch_steps(per_epoch, train.num_train_epochs, accum)
    warmup = phases[0].warmup_steps if phases else _warmup(train, total)
    eval_steps = train.eval_steps or max(1, total // 10)
    return Plan(
        n_train=n_train,
        micro_batch=micro,
        accumulation=accum,
        effective_batch=micro * accum,
        micro_batches_per_epoch=per_epoch,
        steps_per_epoch=per_epoch / accum,
        total_steps=total,
        warmup_steps=warmup,
        eval_steps=eval_steps,
        save_steps=train.save_steps or eval_steps,
        mix=mixture.mix if mixture is not None else "stacked",
        quotas=quotas,
        sizes=mixture.sizes if mixture is not None else (),
        phases=phases,
    )


def _epoch_steps(micro_batches_per_epoch: int, epochs: float, accumulation: int) -> int:
    return max(1, math.ceil(math.floor(micro_batches_per_epoch * epochs) / accumulation))


def _warmup(train: TrainSettings, total: int) -> int:
    warmup = train.warmup_steps if train.warmup_steps > 0 else math.ceil(train.warmup_ratio * total)
    return min(warmup, total)


def _quotas(mixture: Mixture, n_train: int) -> tuple[int, ...]:
    """Rows each dataset gives one epoch of n_train rows: its weight's share, at least one."""
    weights = mixture.weights or ()
    return tuple(max(1, round(n_train * w / sum(weights))) for w in weights)


def _phases(train: TrainSettings, mixture: Mixture, micro: int, accum: int) -> tuple[Phase, ...]:
    steps = _phase_steps(train, mixture, micro, accum)
    lrs = mixture.phase_learning_rates or (train.learning_rate,) * len(mixture.sizes)
    phases, first_row, first_step = [], 0, 1
    for i, (rows, n_steps, lr) in enumerate(zip(mixture.sizes, steps, lrs, strict=True)):
        phases.append(
            Phase(i, first_row, rows, first_step, n_steps, _warmup(train, n_steps), lr, math.ceil(rows / micro))
        )
        first_row, first_step = first_row + rows, first_step + n_steps
    return tuple(phases)


def _phase_steps(train: TrainSettings, mixture: Mixture, micro: int, accum: int) -> tuple[int, ...]:
    """Given steps; else max_steps split by dataset size; else num_train_epochs over each dataset."""
    if mixture.phase_steps:
        if train.max_steps > 0 and sum(mixture.phase_steps) != train.max_steps:
            raise UserError(
                f"data.phase_steps: they add up to {sum(mixture.phase_steps)} steps but train.max_steps is "
                f"{train.max_steps}; remove one of them or make them agree"
            )
        return mixture.phase_steps
    if train.max_steps > 0:
        return _split(train.max_steps, mixture.sizes)
    return tuple(_epoch_steps(math.ceil(n / micro), train.num_train_epochs, accum) for n in mixture.sizes)


def _split(total: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """`total` steps in proportion to `sizes`, each at least one (largest remainders get the rest)."""
    if total < len(sizes):
        raise UserError(f"train.max_steps: {total} steps cannot give each of {len(sizes)} phases one step")
    exact = [total * n / sum(sizes) for n in sizes]
    steps = [max(1, math.floor(x)) for x in exact]
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - steps[i], reverse=True)[: total - sum(steps)]:
        steps[i] += 1
    return tuple(steps)


def mixture_of(data: Any, rows: list[dict]) -> Mixture | None:
    """The Mixture of data.train's datasets, from their prepared rows (each tagged with its `part`);
    None for one dataset or an unweighted stack, which draw from one pool as ever."""
    from tunepilot.data.sources import dataset_names

    if data.mix == "stacked" and not data.mix_weights:
        return None
    names = dataset_names(data.train)
    sizes = [0] * len(names)
    for row in rows:
        sizes[row.get("part", 0)] += 1
    empty = [name for name, n in zip(names, sizes, strict=True) if n == 0]
    if empty:
        raise UserError(
            f"data.train: dataset {empty[0]} has no usable training example, so data.mix: {data.mix} "
            "cannot draw from it; check it with `tunepilot validate`"
        )
    return Mixture(
        data.mix, tuple(sizes), _tuple(data.mix_weights), _tuple(data.phase_steps), _tuple(data.phase_learning_rates)
    )


def _tuple(values: list | None) -> tuple | None:
    return tuple(values) if values else None


def plan_for(config: Any, rows: list[dict]) -> Plan:
    """The plan of a run config over its prepared training rows."""
    return make_plan(config.train, len(rows), mixture_of(config.data, rows))


def micro_batch_indices(plan: Plan, seed: int, micro_index: int, phase: Phase | None = None) -> list[int]:
    """Row indices of global micro-batch `micro_index` (of `phase`, counted from its start, when
    phased); epochs repeat with fresh permutations."""
    if phase is not None:
        epoch, offset = divmod(micro_index, phase.micro_batches_per_epoch)
        order = _epoch_order(phase.rows, seed + PHASE_SEED * phase.index, epoch) + phase.first_row
    elif plan.quotas:
        epoch, offset = divmod(micro_index, plan.micro_batches_per_epoch)
        order = _mixed_order(plan.sizes, plan.quotas, seed, epoch)
    else:
        epoch, offset = divmod(micro_index, plan.micro_batches_per_epoch)
        order = _epoch_order(plan.n_train, seed, epoch)
    return order[offset * plan.micro_batch : (offset + 1) * plan.micro_batch].tolist()


PHASE_SEED = 1_000_003  # phase p draws with seed + PHASE_SEED * p: its own permutations


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's permutation, drawn once per epoch rather than once per micro-batch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


@functools.lru_cache(maxsize=4)
def _mixed_order(sizes: tuple[int, ...], quotas: tuple[int, ...], seed: int, epoch: int) -> torch.Tensor:
    """One stacked epoch: `quotas[i]` rows of dataset i, the next ones of its endless sequence of
    permutations (cycle c drawn with seed (seed, i, c)), shuffled together."""
    picked, first_row = [], 0
    for i, (n, quota) in enumerate(zip(sizes, quotas, strict=True)):
        start = epoch * quota
        cycles = range(start // n, (start + quota - 1) // n + 1)
        stream = torch.cat([_epoch_order(n, _cycle_seed(seed, i, c), 0) for c in cycles])
        picked.append(stream[start - cycles[0] * n : start - cycles[0] * n + quota] + first_row)
        first_row += n
    rows = torch.cat(picked)
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + epoch))]


def _cycle_seed(seed: int, part: int, cycle: int) -> int:
    return seed + PHASE_SEED * (part + 1) + 7919 * cycle


def step_indices(plan: Plan, seed: int, step: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The micro-batches of optimizer step `step` (1-based) that process `rank` of `world` trains."""
    if plan.accumulation % world:
        raise UserError(
            f"train.nproc: {plan.accumulation} micro-batches per step (gradient_accumulation_steps x "
            f"nproc) cannot be shared evenly by {world} processes; set gradient_accumulation_steps "
            f"and nproc so that {world} divides their product"
        )
    phase = plan.phase_of(step)
    local = step - phase.first_step + 1 if phase is not None else step
    first = (local - 1) * plan.accumulation
    return [micro_batch_indices(plan, seed, m, phase) for m in range(first + rank, first + plan.accumulation, world)]


def epoch_at(plan: Plan, step: int) -> float:
    return step * plan.accumulation / plan.micro_batches_per_epoch
