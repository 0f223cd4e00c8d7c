"""Every slot's LoRA weights of every wrapped layer in one buffer, and each layer's and trial's views.

`LoraBank.weights` is one fp32 Parameter [slots, P]: row s holds slot s's A ([r_cap, in]) and B^T
([r_cap, out]) of every wrapped layer, one after the other, ranks below r_cap zero-padded. Its
gradient is one preallocated [slots, P] tensor that autograd accumulates into in place.

- The forward pass casts the whole bank to the compute dtype once and splits it into each layer's
  A [slots, r_cap, in] and B^T [slots, r_cap, out] views (`LoraBank.views`): one cast and one split
  per pass instead of two casts per layer, and one gradient accumulation for all layers (the
  split's backward is one concatenation).
- A trial's optimizer steps its whole row (`LoraBank.row`): one tensor, so its clipping is one norm
  and its AdamW one fused kernel, instead of two tensors per adapted layer. The row's other entries
  (padded ranks, layers the trial does not adapt) are exactly zero and get exactly zero gradients:
  a padded row of A meets a zero row of B^T and vice versa, and a layer without the trial's adapter
  never sees its rows; AdamW with weight decay keeps a zero with a zero gradient at zero.
- A trial's per-layer `lora_A` ([r, in]), `lora_Bt` ([r, out]) and PEFT-shaped `lora_B` ([out, r])
  alias its slice of the bank (and their `.grad` the gradient's): for export and for tests.

The layout depends on r_cap, so a trial with a larger rank than any before re-lays the bank out
(`LoraBank.reserve`): every weight, gradient and (through the returned function) optimizer moment
moves to its new place; nothing about a trial changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class LoraAdapter:
    """One trial's LoRA settings in one layer, and views of its A ([r, in]) and B ([out, r]), PEFT's shapes."""

    def __init__(self, rank: int, alpha: float, use_rslora: bool, dropout: float):
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        self.dropout = dropout
        self.lora_A: nn.Parameter | None = None  # views of the bank, bound by LoraStack
        self.lora_Bt: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None  # the same memory as lora_Bt, transposed (PEFT's B)


class LoraBank:
    """All slots' LoRA weights of all wrapped layers: `weights` [slots, P] (fp32) and its gradient."""

    def __init__(self, shapes: list[tuple[int, int]], device: torch.device | str | None):
        self.shapes = shapes  # (in_features, out_features) of each wrapped layer, model order
        self.slots = self.rank = 0
        self._set(torch.zeros(0, 0, device=device), torch.zeros(0, 0, device=device))

    def _set(self, weights: torch.Tensor, grads: torch.Tensor) -> None:
        self.weights = nn.Parameter(weights)
        self.weights.grad = grads
        self.data_blocks, self.grad_blocks = self.blocks(weights), self.blocks(grads)  # per layer, fixed views

    def width(self, rank: int) -> int:
        return rank * sum(i + o for i, o in self.shapes)

    def blocks(self, flat: torch.Tensor, rank: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: A [rows, r, in] and B^T [rows, r, out], views of `flat` [rows, P] laid out at `rank`."""
        rank = self.rank if rank is None else rank
        pieces = flat.split([n for i, o in self.shapes for n in (rank * i, rank * o)], dim=1)
        rows = flat.shape[0]
        return [
            (pieces[2 * k].view(rows, rank, i), pieces[2 * k + 1].view(rows, rank, o))
            for k, (i, o) in enumerate(self.shapes)
        ]

    def views(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's A and B^T in `dtype` for one forward pass: one cast and one split of the bank,
        differentiable back to `weights` (the split's backward is one concatenation)."""
        return self.blocks(self.weights.to(dtype))

    def row(self, slot: int) -> nn.Parameter:
        """Slot `slot`'s whole row (all its layers' weights) as one Parameter, aliasing the bank, with
        its gradient aliasing the bank's gradient: what the trial's optimizer and clipping see."""
        param = nn.Parameter(self.weights.data[slot])
        param.grad = self.weights.grad[slot]
        return param

    @torch.no_grad()
    def clear(self, slot: int) -> None:
        if slot < self.slots:
            self.weights.data[slot].zero_()
            self.weights.grad[slot].zero_()

    @torch.no_grad()
    def reserve(self, slots: int, rank: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Make room for `slots` rows at rank `rank`, keeping every value where it belongs. Returns the
        function that moves any other [..., P] tensor laid out like a row (optimizer moments) to the
        new layout, or None if nothing changed."""
        slots, rank = max(slots, self.slots), max(rank, self.rank)
        if (slots, rank) == (self.slots, self.rank):
            return None
        old_rank, new_width = self.rank, self.width(rank)

        def relayout(t: torch.Tensor) -> torch.Tensor:
            flat = t.view(1, -1) if t.dim() == 1 else t
            new = flat.new_zeros(flat.shape[0], new_width)
            for (na, nb), (oa, ob) in zip(self.blocks(new, rank), self.blocks(flat, old_rank), strict=True):
                na[:, :old_rank] = oa
                nb[:, :old_rank] = ob
            return new.view(*t.shape[:-1], new_width)

        weights = torch.zeros(slots, new_width, device=self.weights.device)
        grads = torch.zeros_like(weights)
        weights[: self.slots], grads[: self.slots] = relayout(self.weights.data), relayout(self.weights.grad)
        self.slots, self.rank = slots, rank
        self._set(weights, grads)
        return relayout


class LoraStack:
    """One wrapped layer's adapters by slot, and its A / B^T stacks (views of the bank)."""

    def __init__(self, bank: LoraBank, index: int):
        self.bank, self.index = bank, index  # the layer's position among the bank's layers
        self.adapters: dict[int, LoraAdapter] = {}
        self._cache: dict[tuple, tuple] = {}  # (slots, dtype) -> selection index and scales
        # This pass's A and B^T views (`LoraBank.views`), set by the pack before each forward pass
        self.current: tuple[torch.Tensor, torch.Tensor] | None = None
        # This pass's batched selection (A, B^T, scalings) or None (per segment): `prepare_pass`
        self.selected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # A compiled pass's per-row selection (A, B^T, row -> slot, row scalings, dropout): `select_rows`
        self.rows: tuple | None = None

    @property
    def capacity(self) -> tuple[int, int]:
        return self.bank.slots, self.bank.rank

    @property
    def A(self) -> torch.Tensor:  # noqa: N802  (the LoRA paper's name)
        """All slots' A [slots, r_cap, in] (a view of the bank's fp32 weights)."""
        return self.bank.data_blocks[self.index][0]

    @property
    def A_grad(self) -> torch.Tensor:  # noqa: N802
        return self.bank.grad_blocks[self.index][0]

    @torch.no_grad()
    def add(self, slot: int, adapter: LoraAdapter, generator: torch.Generator) -> None:
        """Bind a fresh adapter to `slot` (the bank has room): A kaiming-uniform (a=sqrt(5)) drawn
        from `generator` on CPU, so every device gets the same init, and B zero, PEFT's default init."""
        init = torch.empty(adapter.rank, self.bank.shapes[self.index][0])
        nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
        self.A[slot, : adapter.rank].copy_(init)
        self.adapters[slot] = adapter
        self.bind(slot)

    def forget(self, slot: int) -> None:
        """Drop a slot's adapter (the bank's row is zeroed by its owner, for all layers at once)."""
        self.adapters.pop(slot, None)
        self._cache.clear()

    def bind(self, slot: int) -> None:
        """Point the slot's adapter views at the bank (again, after a re-layout)."""
        ad, r = self.adapters[slot], self.adapters[slot].rank
        (a, bt), (ga, gbt) = self.bank.data_blocks[self.index], self.bank.grad_blocks[self.index]
        views = {
            "lora_A": (a[slot, :r], ga[slot, :r]),
            "lora_Bt": (bt[slot, :r], gbt[slot, :r]),
            "lora_B": (bt[slot, :r].t(), gbt[slot, :r].t()),
        }
        for name, (data, grad) in views.items():
            param = nn.Parameter(data)  # an alias of the slice, not a copy
            param.grad = grad
            setattr(ad, name, param)
        self._cache.clear()

    def pass_views(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This pass's A [slots, r_cap, in] and B^T [slots, r_cap, out]: the views the pack set, or
        (a layer used on its own) a fresh cast of this layer's part of the bank."""
        if self.current is not None and self.current[0].dtype == dtype:
            return self.current
        return self.bank.views(dtype)[self.index]

    def segment(self, slot: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's A [r, in] and B^T [r, out] for this pass, differentiable back to the bank."""
        a, bt = self.pass_views(dtype)
        r = self.adapters[slot].rank
        return a[slot, :r], bt[slot, :r]

    def prepare_pass(
        self,
        segments: list[tuple[int, int, int]],
        rows: int,
        training: bool,
        dtype: torch.dtype,
        device: torch.device,
        compiled: bool = False,
        dropout: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Before a forward pass (after `current` is set). Eager: `selected` is the slots' batched A,
        B^T and scalings when every row belongs to a slot of this layer, the segments are equal and
        no dropout is drawn (two bmm calls for all slots); None otherwise (one delta per segment).
        Compiled: `rows`, the per-row selection (`select_rows`), whatever the composition;
        `dropout`: the pass's row seeds and rates, used when one of this layer's slots draws masks.

        Host work, done here rather than in the layer's forward: a compiled layer then reads
        tensors alone, so a new set of active slots changes their sizes (one dynamic graph), not
        Python values its graph would be guarded on (a graph per composition)."""
        mine = [(s, a, b) for s, a, b in segments if s in self.adapters]
        drop = training and any(self.adapters[s].dropout > 0 for s, _, _ in mine)
        self.selected = self.rows = None
        if compiled:  # one path for every layer and composition
            self.rows = self.select_rows(tuple(segments), rows, dropout if drop else None, dtype, device)
            return
        uniform = len({b - a for _, a, b in mine}) == 1 and sum(b - a for _, a, b in mine) == rows
        if uniform and not drop:
            self.selected = self.select(tuple(s for s, _, _ in mine), dtype, device)

    def select_rows(self, segments: tuple, rows: int, dropout, dtype: torch.dtype, device: torch.device) -> tuple:
        """A compiled pass's per-row selection: each row's A [rows, r, in] and B^T [rows, r, out] (its
        slot's, gathered here, outside the graph, differentiable back to the bank) and its scaling,
        0 where its slot does not adapt this layer (whose A and B are zero in the bank anyway). The
        compiled layer then reads tensors alone and runs the same graph for every layer, set of
        slots, segment sizes and targets (`MultiLoraLinear._rows_add`). `dropout`: the pass's
        (row seeds, rates) when it draws masks."""
        key = ("rows", segments, rows, dtype)
        if key not in self._cache:
            where, scale = [0] * rows, [0.0] * rows
            for slot, first, end in segments:
                ad = self.adapters.get(slot)
                for row in range(first, end):
                    where[row], scale[row] = slot, ad.scaling if ad is not None else 0.0
            scales = torch.tensor(scale, dtype=dtype, device=device).view(-1, 1, 1)
            self._cache[key] = (torch.tensor(where, device=device), scales)
        index, scales = self._cache[key]
        a, bt = self.pass_views(dtype)
        return a.index_select(0, index), bt.index_select(0, index), scales, dropout

    def select(
        self, slots: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The given slots' A [k, r, in], B^T [k, r, out] and scalings [k, 1, 1], in `dtype`.

        All slots in order take the stacks as they are; a run of consecutive slots a narrow view;
        others one index_select. Ranks are cut to the largest of these slots. The scalings and the
        index live on the device, cached until the slots change: a host-to-device copy in every
        layer's forward would synchronise the host with the GPU."""
        index, scales, r = self.select_cached(slots, dtype, device)
        a, bt = self.pass_views(dtype)
        if index is not None:
            a, bt = a.index_select(0, index), bt.index_select(0, index)
        elif len(slots) != a.shape[0]:
            a, bt = a[slots[0] : slots[-1] + 1], bt[slots[0] : slots[-1] + 1]
        if r < a.shape[1]:
            a, bt = a[:, :r], bt[:, :r]
        return a, bt, scales

    def select_cached(self, slots: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple:
        key = (slots, dtype)
        if key not in self._cache:
            index = None
            if slots != tuple(range(slots[0], slots[-1] + 1)):
                index = torch.tensor(slots, device=device)
            scales = torch.tensor([self.adapters[s].scaling for s in slots], dtype=dtype, device=device)
            self._cache[key] = (index, scales.view(-1, 1, 1), max(self.adapters[s].rank for s in slots))
        return self._cache[key]
