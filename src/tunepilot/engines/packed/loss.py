"""Chunked cross-entropy: lm_head and the loss per chunk of rows, never all logits at once.

The standard causal-LM loss builds logits for every position ([tokens, vocab], upcast to fp32):
for 8 trials x 4 x 1,024 tokens and a 152k vocabulary that is 20 GB. Here only positions with a
label (shifted, != -100) reach lm_head at all, in chunks of `chunk_rows`, and each chunk runs under
activation checkpointing, so its logits are freed after the forward and recomputed in the backward.
The value is the same as `F.cross_entropy(logits.float(), labels, ignore_index=-100)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def shifted_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [n, H] that predict a trained token, and those tokens [n] (causal shift)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = y != IGNORE_INDEX
    return h[keep], y[keep]


def chunked_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                   chunk_rows: int = 4096) -> torch.Tensor:
    """Sum of token losses (fp32 scalar) over rows of `hidden` [n, H] with targets `labels` [n]."""
    weight, bias = head.weight, getattr(head, "bias", None)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_rows):
        h, y = hidden[start:start + chunk_rows], labels[start:start + chunk_rows]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_loss, h, y, weight, bias, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, y, weight, bias)
    return total
