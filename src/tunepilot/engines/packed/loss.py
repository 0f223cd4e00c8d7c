"""Chunked cross-entropy: lm_head and the loss per chunk of rows, never all logits at once.

The standard causal-LM loss builds logits for every position ([tokens, vocab], upcast to fp32):
for 8 trials x 4 x 1,024 tokens and a 152k vocabulary that is 20 GB. Here only positions with a
label (shifted, != -100) reach lm_head at all, in chunks of `chunk_rows`. The head is frozen, so
the only gradient needed is the one w.r.t. the hidden states, and it is computed in the same pass
as the loss, chunk by chunk: softmax(logits) - onehot(label), times the head weight. Each chunk's
logits are freed at once; nothing is recomputed and no separate backward pass over [rows, vocab]
runs (the scheme of fused linear-cross-entropy kernels, here with plain torch ops).

Rows belong to segments (a pack's trials): the result is one summed token loss per segment, and
chunks run across segment boundaries, so every chunk but the last has the same shape (one compiled
graph). Per segment the value is `F.cross_entropy(logits.float(), labels, reduction="sum")` over its
rows, and the gradient is its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def ce_chunk(
    h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token losses of one chunk of rows [rows] (fp32), and d (their sum) / d h (softmax - onehot, times the head)."""
    # dtype=float32 upcasts inside the kernel (the same math as .float() first, without writing
    # and re-reading an fp32 copy of the [rows, vocab] logits)
    logp = torch.log_softmax(F.linear(h, weight, bias), dim=-1, dtype=torch.float32)
    losses = -logp.gather(1, y[:, None]).squeeze(1)
    if not want_grad:
        return losses, None
    probs = logp.exp_()  # softmax, in place (the losses are already taken)
    probs[torch.arange(len(y), device=y.device), y] -= 1.0
    return losses, probs.to(h.dtype) @ weight


def ce_chunk_fused(
    h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ce_chunk`'s result, written for torch.compile: the fp32 upcast, logsumexp, softmax, one-hot
    subtraction and bf16 cast become one reduction and one pointwise kernel over the low-precision
    logits (eager, this would write fp32 copies of the logits; use `ce_chunk` there)."""
    logits = F.linear(h, weight, bias).float()
    lse = torch.logsumexp(logits, dim=-1)
    losses = lse - logits.gather(1, y[:, None]).squeeze(1)
    if not want_grad:
        return losses, None
    onehot = torch.arange(logits.shape[1], device=y.device)[None, :] == y[:, None]
    return losses, (torch.exp(logits - lse[:, None]) - onehot.float()).to(h.dtype) @ weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-segment sums of token losses of lm_head(hidden); d/d hidden computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, labels, owner, segments, weight, bias, chunk_rows, chunk_fn, fixed):
        rows = hidden.shape[0]
        if fixed and rows % chunk_rows:  # pad to whole chunks: one chunk shape, one compiled graph
            pad = chunk_rows - rows % chunk_rows
            hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
            labels = torch.cat([labels, labels.new_zeros(pad)])
            owner = torch.cat([owner, owner.new_full((pad,), segments)])  # an extra bucket, dropped
        totals = torch.zeros(segments + 1, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            end = start + chunk_rows
            losses, g = chunk_fn(hidden[start:end], labels[start:end], weight, bias, grad is not None)
            totals.index_add_(0, owner[start:end], losses)
            if grad is not None:
                grad[start:end] = g
        ctx.save_for_backward(grad[:rows] if grad is not None else None, owner[:rows])
        return totals[:segments]

    @staticmethod
    def backward(ctx, grad_totals):
        grad, owner = ctx.saved_tensors
        scale = grad_totals.to(grad.dtype).index_select(0, owner)  # each row: its segment's upstream grad
        return grad * scale[:, None], None, None, None, None, None, None, None, None


def shifted_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [n, H] that predict a trained token, and those tokens [n] (causal shift)."""
    keep = trained_positions(labels.cpu())
    flat = hidden.reshape(-1, hidden.shape[-1])
    keep = keep.to(hidden.device)
    return flat.index_select(0, keep), labels.reshape(-1).index_select(0, keep + 1)


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat positions (row * length + t) of `labels` [rows, length] whose next token is trained.

    Computed on the host from host labels: on the device this selection (`nonzero`) would make the
    host wait for the GPU. The target of position p is `labels.reshape(-1)[p + 1]`."""
    rows, length = labels.shape
    t = (labels[:, 1:] != IGNORE_INDEX).nonzero()
    return t[:, 0] * length + t[:, 1]


def chunked_ce_sum(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_rows: int = 4096, chunk_fn=ce_chunk
) -> torch.Tensor:
    """Sum of token losses (fp32 scalar) over rows of `hidden` [n, H] with targets `labels` [n]."""
    owner = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    return chunked_ce_sums(hidden, labels, owner, 1, head, chunk_rows, chunk_fn)[0]


def chunked_ce_sums(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    owner: torch.Tensor,
    segments: int,
    head: torch.nn.Module,
    chunk_rows: int = 4096,
    chunk_fn=ce_chunk,
    fixed: bool = False,
) -> torch.Tensor:
    """Per-segment sums of token losses ([segments], fp32): row i of `hidden` [n, H] with target
    `labels[i]` belongs to segment `owner[i]`.

    `chunk_fn` computes one chunk (`ce_chunk`, or a compiled `ce_chunk_fused`); `fixed` pads the
    rows to whole chunks, so that a compiled chunk function sees one shape whatever the number of
    trained tokens (the padding rows go to a bucket that is dropped)."""
    if head.weight.requires_grad:
        raise ValueError("chunked_ce_sums computes no lm_head weight gradient; the head must be frozen")
    return _LinearCrossEntropy.apply(
        hidden, labels, owner, segments, head.weight, getattr(head, "bias", None), chunk_rows, chunk_fn, fixed
    )


def token_scores(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token losses [n] (fp32) and whether each target is the argmax [n] (bool), chunk by chunk
    (eval only: no gradient)."""
    losses, correct = [], []
    bias = getattr(head, "bias", None)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = F.linear(hidden[start : start + chunk_rows], head.weight, bias).float()
        y = labels[start : start + chunk_rows]
        losses.append(torch.logsumexp(logits, -1) - logits.gather(1, y[:, None]).squeeze(1))
        correct.append(logits.argmax(-1) == y)
    if not losses:
        return hidden.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return torch.cat(losses), torch.cat(correct)
