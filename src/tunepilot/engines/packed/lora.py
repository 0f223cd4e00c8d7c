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
import torch.nn.functional as F
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


M32 = 0xFFFFFFFF


def _mul32(z: torch.Tensor, c: int) -> torch.Tensor:
    """(z * c) mod 2^32 for 0 <= z < 2^32, in 16-bit halves of c: no product leaves int64's range
    (a wrapping int64 product is undefined in the C++ that inductor writes for CPUs)."""
    return (z * (c & 0xFFFF) + (((z * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(z: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: every input bit flips each output bit with probability ~1/2."""
    z = _mul32(z ^ (z >> 16), 0x85EBCA6B)
    z = _mul32(z ^ (z >> 13), 0xC2B2AE35)
    return z ^ (z >> 16)


def hashed_keep(x: torch.Tensor, seeds: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout masks for x [rows, width, features] of a compiled pass: keep / (1 - p) with
    P(keep) = 1 - p per row (`seeds`: non-negative int64 below 2^63, `p`: [rows, 1, 1]; p = 0 keeps
    all). A counter-based draw, MurmurHash3's finalizer of (row seed, position, feature), in integer
    tensor ops that inductor fuses into one kernel and computes exactly as eager does: a mask
    depends on its row's seed and coordinates alone (not on the pack or its padding). Written here
    because torch's generators hold state that torch.compile cannot carry, and its in-graph draws
    come from the global RNG state, which would tie a trial's masks to its pack."""
    width, features = x.shape[-2], x.shape[-1]
    t = torch.arange(width, device=x.device).view(1, -1, 1)
    i = torch.arange(features, device=x.device).view(1, 1, -1)
    counter = t * features + i  # below 2^37 for any real width and feature count
    h = _fmix32((seeds & M32) ^ (counter & M32))
    h = _fmix32(h ^ ((seeds >> 32) & M32) ^ (counter >> 32))
    u = (h >> 8).to(torch.float32) * 2.0**-24  # the top 24 bits: uniform on [0, 1)
    return (u >= p).to(x.dtype) / (1.0 - p).to(x.dtype)


class MultiLoraLinear(nn.Module):
    """Wraps a frozen `nn.Linear`; holds any number of slots' adapters (module replacement, like PEFT)."""

    def __init__(self, base_layer: nn.Linear, context: PackContext, bank: LoraBank, index: int):
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        self.index = index  # position among wrapped layers: part of the dropout seed, the bank's layer
        self.stack = LoraStack(bank, index)
        # The layer's part of a compiled pass's dropout seeds, as a tensor: a Python int would be a
        # value the compiled graph is guarded on (a graph per layer)
        salt = torch.tensor(_mix_seed(index) >> 1, device=base_layer.weight.device)  # 62 bits: sums fit int64
        self.register_buffer("salt", salt, persistent=False)

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
        if self.stack.selected is not None:  # set by the pack: `prepare_pass`
            return self._batched_forward(x, *self.stack.selected)
        out = self.base_layer(x)
        return self._segments_add(out, x)

    def _segments_add(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.stack.rows is not None and x.dtype == out.dtype and x.dim() == 3:  # compiled packs
            return self._rows_add(out, x, *self.stack.rows)
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

    def _base_output(self, x3: torch.Tensor) -> torch.Tensor:
        """The base layer's output for a 3-D input, as a tensor of its own (not a view): on a 3-D
        input, a linear layer with a bias returns a view of its 2-D GEMM result (one without
        returns its own tensor), so a plain `nn.Linear`'s bias is added here, in place, instead."""
        base = self.base_layer
        if type(base) is nn.Linear and base.bias is not None:
            return F.linear(x3, base.weight).add_(base.bias)
        return base(x3)

    def _rows_add(self, out, x, a, bt, scales, dropout) -> torch.Tensor:
        # A compiled pack: each row with its own slot's A and B^T (`LoraStack.select_rows`; scaling 0
        # where its slot does not adapt this layer, so it adds exactly 0 and gives no gradient). The
        # graph reads tensors only, so it holds for every layer and composition; per segment, it was
        # guarded on the segments' Python values and recompiled until torch's limit sent it to eager.
        if dropout is not None:
            seeds, p = dropout
            x = x * hashed_keep(x, seeds + self.salt, p)
        return out + torch.bmm(torch.bmm(x, a.transpose(1, 2)) * scales, bt)

    def _batched_forward(self, x: torch.Tensor, a: torch.Tensor, bt: torch.Tensor, scales) -> torch.Tensor:
        # Every row belongs to one of the k slots, in equal runs: the base linear runs on x seen as
        # [k, rows/k * length, in] (the same GEMM), so that its output already has the slots' batch
        # shape. The slots' A and B^T come straight from the layer's stacks (lower ranks
        # zero-padded: a padded row of A meets a zero row of B^T, so it adds exactly 0 and gets a
        # zero gradient). Two bmm calls for all slots (the launch count does not grow with K); the
        # second adds the delta into the base output in place, in the matmul's epilogue (beta = 1:
        # no copy of the output, which out-of-place baddbmm makes; autograd allows it, as the base
        # linear does not keep its output for backward). In place on the output itself, not on a
        # view of it: on a view, autograd's backward (CopySlices) clones the gradient and copies it
        # back, per layer; an H100 profile at SmolLM2's shape put that at 40 ms of host and 13 ms of
        # device time a step, under the profiler (bench/BENCHMARKS.md). The scaling multiplies the
        # narrow x A^T. (Compiled packs take `_rows_add`, whose plain add fuses into the kernel that
        # reads the output next.)
        k = a.shape[0]
        x3 = x.reshape(k, -1, x.shape[-1])
        out = self._base_output(x3)
        if out.dtype != x.dtype:  # autocast: the adapters' dtype is not the output's
            return self._segments_add(out.view(*x.shape[:-1], out.shape[-1]), x)
        xa = torch.bmm(x3, a.transpose(1, 2)) * scales
        return out.baddbmm_(xa, bt).view(*x.shape[:-1], out.shape[-1])
