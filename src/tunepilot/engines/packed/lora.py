"""The multi-adapter linear layer: one frozen base projection, one LoRA delta per trial segment.

A forward pass of the packed engine runs on the concatenation (along the batch dimension) of every
active trial's micro-batch. `PackContext.segments` says which rows belong to which slot. Each
`MultiLoraLinear` computes the frozen base output once for all rows, then adds, for each slot that
targets this module, that slot's LoRA delta on its own rows only:

    y[rows_k] = W x[rows_k] + scaling_k * B_k A_k dropout_k(x[rows_k])

which is exactly PEFT's LoRA `Linear.forward` for trial k (scaling alpha/r, or alpha/sqrt(r) with
rsLoRA). Rows of slots that do not target the module get no delta. No other trial's rows touch a
trial's A and B, so a trial's gradients are the ones it would get alone.

Dropout masks come from a generator seeded by (trial seed, micro-step, module index), so a trial's
masks do not depend on what else is packed with it, and a recomputation under activation
checkpointing draws the same mask as the original forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tunepilot.engines.packed.stack import LoraAdapter, LoraBank, LoraStack


@dataclass
class PackContext:
    """What the current forward pass computes; shared by every wrapped layer of one model."""

    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (slot, first row, end row)
    dropout_seeds: dict[int, int] = field(default_factory=dict)  # slot -> seed of this micro-step
    widths: dict[int, int] = field(default_factory=dict)  # slot -> its own (unpadded) sequence width
    training: bool = False
    bank: LoraBank | None = None  # every wrapped layer's slots' weights (set by inject.wrap_linears)


def _mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (splitmix64-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class MultiLoraLinear(nn.Module):
    """Wraps a frozen `nn.Linear`; holds any number of slots' adapters (module replacement, like PEFT)."""

    def __init__(self, base_layer: nn.Linear, context: PackContext, bank: LoraBank, index: int):
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        self.index = index  # position among wrapped layers: part of the dropout seed, the bank's layer
        self.stack = LoraStack(bank, index)

    @property
    def adapters(self) -> dict[str, LoraAdapter]:
        """The slots' adapters by slot name (read-only view; `inject.add_adapters`/`remove_adapters` change it)."""
        return {str(s): ad for s, ad in self.stack.adapters.items()}

    def add_adapter(self, slot: int, adapter: LoraAdapter, generator: torch.Generator) -> None:
        self.stack.add(slot, adapter, generator)

    @property
    def weight(self) -> torch.Tensor:  # for code that reads proj.weight (dtype/device probes)
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.stack.selected is not None and x.dtype == out.dtype:  # set by the pack: `prepare_pass`
            return self._batched_add(out, x, *self.stack.selected)
        adapters = self.stack.adapters
        segments = [(s, a, b) for s, a, b in self.context.segments if s in adapters]
        if not segments:
            return out
        pieces, row = [], 0
        for slot, a, b in segments:
            if a > row:  # rows of slots that do not target this layer: no delta
                pieces.append(out.new_zeros((a - row, *out.shape[1:])))
            pieces.append(self._delta(x[a:b], slot).to(out.dtype))
            row = b
        if row < x.shape[0]:
            pieces.append(out.new_zeros((x.shape[0] - row, *out.shape[1:])))
        return out + torch.cat(pieces, dim=0)

    def _delta(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        ad = self.stack.adapters[slot]
        if ad.dropout > 0 and self.context.training:
            x = x * self._dropout_mask(x, slot, ad.dropout)
        a, bt = self.stack.segment(slot, x.dtype)
        # The scaling multiplies the narrow x A^T ([rows, r]), not the wide output.
        return ((x @ a.t()) * ad.scaling) @ bt

    def _dropout_mask(self, x: torch.Tensor, slot: int, p: float) -> torch.Tensor:
        # Drawn at the trial's own width, so the mask does not depend on how far the pack pads it.
        gen = torch.Generator(device=x.device)
        gen.manual_seed(_mix_seed(self.context.dropout_seeds[slot], self.index))
        shape = list(x.shape)
        if x.dim() == 3:
            shape[1] = min(shape[1], self.context.widths.get(slot, shape[1]))
        keep = (torch.rand(shape, generator=gen, device=x.device, dtype=torch.float32) >= p).to(x.dtype)
        if shape[1] < x.shape[1]:
            keep = torch.nn.functional.pad(keep, (0, 0, 0, x.shape[1] - shape[1]))
        return keep / (1.0 - p)

    def _batched_add(
        self, out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, bt: torch.Tensor, scales
    ) -> torch.Tensor:
        # The slots' A and B^T come straight from the layer's stacks (lower ranks zero-padded: a
        # padded row of A meets a zero row of B^T, so it adds exactly 0 and gets a zero gradient).
        # Two bmm calls for all slots (the launch count does not grow with K); eager, the second adds
        # the delta into the base output in place, in the matmul's epilogue (beta = 1: no copy of
        # the output, which out-of-place baddbmm makes; autograd allows it, as the base linear does
        # not keep its output for backward). The scaling multiplies the narrow x A^T.
        k = a.shape[0]
        xa = torch.bmm(x.reshape(k, -1, x.shape[-1]), a.transpose(1, 2)) * scales
        if torch.compiler.is_compiling():
            # Compiled, an in-place baddbmm becomes a copy of the output plus an out-of-place one;
            # a plain add instead fuses into the kernel that reads this output next (rotary, SiLU x
            # up, the residual add).
            return out + torch.bmm(xa, bt).view(out.shape)
        out.view(k, -1, out.shape[-1]).baddbmm_(xa, bt)
        return out
