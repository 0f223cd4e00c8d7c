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

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class PackContext:
    """What the current forward pass computes; shared by every wrapped layer of one model."""

    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (slot, first row, end row)
    dropout_seeds: dict[int, int] = field(default_factory=dict)  # slot -> seed of this micro-step
    widths: dict[int, int] = field(default_factory=dict)  # slot -> its own (unpadded) sequence width
    training: bool = False


class LoraAdapter(nn.Module):
    """One trial's A and B for one linear layer (fp32 weights, like PEFT's adapter weights)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 use_rslora: bool, dropout: float, device: torch.device | str | None = None):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=torch.float32))
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        self.dropout = dropout

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> None:
        # PEFT's default init ("init_lora_weights=True"): A kaiming-uniform with a=sqrt(5), B zeros,
        # so the adapted model starts exactly at the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_B.zero_()


def _mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (splitmix64-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class MultiLoraLinear(nn.Module):
    """Wraps a frozen `nn.Linear`; holds any number of slots' adapters (module replacement, like PEFT)."""

    def __init__(self, base_layer: nn.Linear, context: PackContext, index: int):
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        self.index = index  # position among wrapped layers: part of the dropout seed
        self.adapters = nn.ModuleDict()
        self._scale_cache: tuple | None = None

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
        segments = [(s, a, b) for s, a, b in self.context.segments if str(s) in self.adapters]
        if not segments:
            return out
        if self._uniform(segments, x.shape[0]) and x.dtype == out.dtype:
            return self._batched_add(out, x, segments)
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
        ad = self.adapters[str(slot)]
        if ad.dropout > 0 and self.context.training:
            x = x * self._dropout_mask(x, slot, ad.dropout)
        # The scaling goes into the small B ([out, r]) instead of the big output ([rows, out]).
        a, b = ad.lora_A.to(x.dtype), (ad.lora_B * ad.scaling).to(x.dtype)
        return (x @ a.t()) @ b.t()

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

    def _uniform(self, segments: list[tuple[int, int, int]], rows: int) -> bool:
        """Every row targeted, equal segment sizes, no dropout: one batched matmul pair."""
        if len(segments) < 2 or sum(b - a for _, a, b in segments) != rows:
            return False
        sizes = {b - a for _, a, b in segments}
        drop = self.context.training and any(self.adapters[str(s)].dropout > 0 for s, _, _ in segments)
        return len(sizes) == 1 and not drop

    def _batched_add(self, out: torch.Tensor, x: torch.Tensor, segments: list) -> torch.Tensor:
        # K small matmul pairs become two bmm calls (the launch count stops growing with K), and
        # baddbmm adds the delta into the base output in the matmul's epilogue. The scaling
        # multiplies the narrow x A^T, not the wide output. Lower ranks are zero-padded to the highest: padded rows of A
        # meet zero columns of B, so they add exactly 0 and pass no gradient to the real weights.
        ads = [self.adapters[str(s)] for s, _, _ in segments]
        k, r = len(ads), max(ad.rank for ad in ads)
        pad = torch.nn.functional.pad
        a = torch.stack([ad.lora_A if ad.rank == r else pad(ad.lora_A, (0, 0, 0, r - ad.rank))
                         for ad in ads]).to(x.dtype)  # [K, r, in]
        b = torch.stack([ad.lora_B if ad.rank == r else pad(ad.lora_B, (0, r - ad.rank))
                         for ad in ads]).to(x.dtype)  # [K, out, r]
        xa = torch.bmm(x.reshape(k, -1, x.shape[-1]), a.transpose(1, 2)) * self._scales(ads, x)
        return torch.baddbmm(out.reshape(k, -1, out.shape[-1]), xa, b.transpose(1, 2)).view(out.shape)

    def _scales(self, ads: list[LoraAdapter], x: torch.Tensor) -> torch.Tensor:
        """The slots' scalings as a [K, 1, 1] device tensor, applied to the narrow x A^T ([rows, r]).

        Kept until the slots' scalings change: a host-to-device copy in every layer's forward would
        synchronise the host with the GPU each time."""
        key = (tuple(ad.scaling for ad in ads), x.dtype, x.device)
        if self._scale_cache is None or self._scale_cache[0] != key:
            values = torch.tensor([ad.scaling for ad in ads], dtype=x.dtype, device=x.device)
            self._scale_cache = (key, values.view(-1, 1, 1))
        return self._scale_cache[1]
