"""Chunked cross-entropy: lm_head and the loss per chunk of rows, never all logits at once.

The standard causal-LM loss builds logits for every position ([tokens, vocab], upcast to fp32):
for 8 trials x 4 x 1,024 tokens and a 152k vocabulary that is 20 GB. Here only positions with a
label (shifted, != -100) reach lm_head at all, in chunks of `chunk_rows`. The head is frozen, so
the only gradient needed is the one w.r.t. the hidden states, and it is computed in the same pass
as the loss, chunk by chunk: softmax(logits) - onehot(label), times the head weight. Each chunk's
logits are freed at once; nothing is recomputed and no separate backward pass over [rows, vocab]
runs (the scheme of fused linear-cross-entropy kernels, here with plain torch ops). The value is
`F.cross_entropy(logits.float(), labels, reduction="sum")` and the gradient is its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def ce_chunk(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed token loss of one chunk of rows, and d loss / d h (softmax - onehot, times the head)."""
    # dtype=float32 upcasts inside the kernel (the same math as .float() first, without writing
    # and re-reading an fp32 copy of the [rows, vocab] logits)
    logp = torch.log_softmax(F.linear(h, weight, bias), dim=-1, dtype=torch.float32)
    total = -logp.gather(1, y[:, None]).sum()
    if not want_grad:
        return total, None
    probs = logp.exp_()  # softmax, in place (total is already taken)
    probs[torch.arange(len(y), device=y.device), y] -= 1.0
    return total, probs.to(h.dtype) @ weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses of lm_head(hidden) against labels; d/d hidden computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, labels, weight, bias, chunk_rows, chunk_fn):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h, y = hidden[start:start + chunk_rows], labels[start:start + chunk_rows]
            part, g = chunk_fn(h, y, weight, bias, grad is not None)
            total += part
            if grad is not None:
                grad[start:start + chunk_rows] = g
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None, None


def shifted_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [n, H] that predict a trained token, and those tokens [n] (causal shift)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = (y != IGNORE_INDEX).nonzero().squeeze(1)  # one host sync for both selections
    return h.index_select(0, keep), y.index_select(0, keep)


def chunked_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                   chunk_rows: int = 4096, chunk_fn=ce_chunk) -> torch.Tensor:
    """Sum of token losses (fp32 scalar) over rows of `hidden` [n, H] with targets `labels` [n].

    `chunk_fn` computes one chunk (`ce_chunk`, or a compiled `ce_chunk` that fuses the softmax,
    the one-hot subtraction and the cast into few kernels)."""
    if head.weight.requires_grad:
        raise ValueError("chunked_ce_sum computes no lm_head weight gradient; the head must be frozen")
    return _LinearCrossEntropy.apply(hidden, labels, head.weight, getattr(head, "bias", None), chunk_rows,
                                    chunk_fn)
