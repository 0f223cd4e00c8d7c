"""Every slot's LoRA weights of one layer in two stacked Parameters, and each trial's views of them.

A layer's slots live in `A` ([slots, r_cap, in]) and `Bt` ([slots, r_cap, out], B transposed),
fp32, with ranks below r_cap zero-padded. The forward pass reads the stacks only, so K trials cost
one bmm pair and one gradient accumulation per layer (no per-step stacking of K small tensors, no
K-way backward of that stack: about 8,000 dispatched ops per K=8 step of the Qwen2.5-0.5B shape).

Each trial still owns exactly its weights: its `lora_A` ([r, in]), `lora_Bt` ([r, out]) and
PEFT-shaped `lora_B` ([out, r]) are Parameters that alias its slice of the stacks, and their
`.grad` aliases its slice of the stacks' gradients. Its own optimizer steps, clips and zeroes those
views in place; no other trial's slice is touched. The stacks' gradients are allocated once and
autograd accumulates into them in place, so the views stay valid; a trial therefore zeroes its
gradients with `zero_grad(set_to_none=False)`. Padded ranks stay exactly zero: a padded row of A
meets a zero row of Bt, so both get a zero gradient, and no optimizer ever steps them.
B is stored transposed so that every trial's slice is one dense block whatever its rank: a fused
optimizer gets contiguous tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoraAdapter:
    """One trial's A ([r, in]) and B ([out, r]) in one layer, PEFT's shapes, fp32 like PEFT's weights."""

    def __init__(self, rank: int, alpha: float, use_rslora: bool, dropout: float):
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        self.dropout = dropout
        self.lora_A: nn.Parameter | None = None  # views of the stacks, bound by LoraStack
        self.lora_Bt: nn.Parameter | None = None  # what the trial's optimizer steps (contiguous)
        self.lora_B: nn.Parameter | None = None  # the same memory as lora_Bt, transposed (PEFT's B)

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_Bt]


class LoraStack(nn.Module):
    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(0, 0, in_features, device=device))
        self.Bt = nn.Parameter(torch.zeros(0, 0, out_features, device=device))
        self.A.grad, self.Bt.grad = torch.zeros_like(self.A), torch.zeros_like(self.Bt)
        self.adapters: dict[int, LoraAdapter] = {}
        self._cache: dict[tuple, tuple] = {}  # (slots, dtype) -> selection index and scales

    @property
    def capacity(self) -> tuple[int, int]:
        return self.A.shape[0], self.A.shape[1]

    @torch.no_grad()
    def add(self, slot: int, adapter: LoraAdapter, generator: torch.Generator) -> None:
        """Bind a fresh adapter to `slot`: A kaiming-uniform (a=sqrt(5)) drawn from `generator` on
        CPU, so every device gets the same init, and B zero, PEFT's default init."""
        slots, r_cap = self.capacity
        if slot >= slots or adapter.rank > r_cap:
            self._grow(max(slots, slot + 1), max(r_cap, adapter.rank))
        self.clear(slot)
        init = torch.empty(adapter.rank, self.A.shape[2])
        nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
        self.A[slot, :adapter.rank].copy_(init)
        self.adapters[slot] = adapter
        self._bind(slot, adapter)

    def slot_tensors(self, slot: int) -> list[torch.Tensor]:
        """The slot's slices of the weight and gradient stacks (for zeroing many layers at once)."""
        if slot >= self.A.shape[0]:
            return []
        return [self.A.data[slot], self.Bt.data[slot], self.A.grad[slot], self.Bt.grad[slot]]

    def forget(self, slot: int) -> None:
        """Drop a slot's adapter (its slices must be zeroed too: `clear`, or `slot_tensors` in bulk)."""
        self.adapters.pop(slot, None)
        self._cache.clear()

    @torch.no_grad()
    def clear(self, slot: int) -> None:
        """Forget a slot: its weights and gradients become zero (the padding a later trial needs)."""
        self.forget(slot)
        for t in self.slot_tensors(slot):
            t.zero_()

    def _bind(self, slot: int, ad: LoraAdapter) -> None:
        r = ad.rank
        views = {"lora_A": (self.A.data[slot, :r], self.A.grad[slot, :r]),
                 "lora_Bt": (self.Bt.data[slot, :r], self.Bt.grad[slot, :r]),
                 "lora_B": (self.Bt.data[slot, :r].t(), self.Bt.grad[slot, :r].t())}
        for name, (data, grad) in views.items():
            param = getattr(ad, name)
            if param is None:
                param = nn.Parameter(data)  # an alias of the slice, not a copy
                setattr(ad, name, param)
            else:
                param.data = data  # re-pointed after growth; optimizer state keys stay the same
            param.grad = grad
        self._cache.clear()

    @torch.no_grad()
    def _grow(self, slots: int, r_cap: int) -> None:
        old_slots, old_r = self.capacity
        for name in ("A", "Bt"):
            old = getattr(self, name)
            new = old.new_zeros(slots, r_cap, old.shape[2])
            new[:old_slots, :old_r] = old
            grad = torch.zeros_like(new)
            grad[:old_slots, :old_r] = old.grad
            param = nn.Parameter(new)
            param.grad = grad
            setattr(self, name, param)
        for slot, ad in self.adapters.items():
            self._bind(slot, ad)

    def segment(self, slot: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's A [r, in] and B^T [r, out] as graph slices of the stacks."""
        r = self.adapters[slot].rank
        return self.A[slot, :r].to(dtype), self.Bt[slot, :r].to(dtype)

    def select(self, slots: tuple[int, ...], dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The given slots' A [k, r, in], B^T [k, r, out] and scalings [k, 1, 1], in `dtype`.

        All slots in order take the stacks as they are; a run of consecutive slots a narrow view;
        others one index_select. Ranks are cut to the largest of these slots. The scalings and the
        index live on the device, cached until the slots change: a host-to-device copy in every
        layer's forward would synchronise the host with the GPU."""
        index, scales, r = self.select_cached(slots, dtype, device)
        a, bt = self.A, self.Bt
        if index is not None:
            a, bt = a.index_select(0, index), bt.index_select(0, index)
        elif len(slots) != a.shape[0]:
            a, bt = a[slots[0]:slots[-1] + 1], bt[slots[0]:slots[-1] + 1]
        if r < a.shape[1]:
            a, bt = a[:, :r], bt[:, :r]
        return a.to(dtype), bt.to(dtype), scales

    def select_cached(self, slots: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple:
        key = (slots, dtype)
        if key not in self._cache:
            index = None
            if slots != tuple(range(slots[0], slots[-1] + 1)):
                index = torch.tensor(slots, device=device)
            scales = torch.tensor([self.adapters[s].scaling for s in slots], dtype=dtype, device=device)
            self._cache[key] = (index, scales.view(-1, 1, 1), max(self.adapters[s].rank for s in slots))
        return self._cache[key]
