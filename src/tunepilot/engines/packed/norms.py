"""The decoder's RMSNorm layers as one fused kernel each (eager packed engine).

transformers writes RMSNorm as five elementwise ops in fp32 (upcast, square, mean, rsqrt-scale,
downcast) and a weight multiply; in eager mode each is its own kernel reading and writing the whole
[tokens, hidden] activation, several of them in fp32, and autograd keeps the fp32 copies for the
backward pass. `torch.rms_norm` does the same normalisation in one kernel (fp32 inside, the input's
dtype out) with a fused backward. `FusedRMSNorm` keeps transformers' order of operations: normalise
and round to the input dtype, then scale by the weight in that dtype.

A norm is replaced only if its class is named `...RMSNorm`, it has a 1-D weight and an epsilon, and
on a random input it gives the same output as the fused form; norms with another formula (Gemma's
`1 + weight`, norms without a weight) fail that check and stay as they are. Module replacement, as
PEFT replaces linear layers: the weight is the same Parameter, so names and state dicts do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedRMSNorm(nn.Module):
    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


def _epsilon(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _candidate(module: nn.Module) -> FusedRMSNorm | None:
    weight, eps = getattr(module, "weight", None), _epsilon(module)
    if not type(module).__name__.endswith("RMSNorm") or eps is None:
        return None
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return None
    return FusedRMSNorm(weight, eps)


@torch.no_grad()
def _same_output(original: nn.Module, fused: FusedRMSNorm) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, fused.weight.shape[0], generator=gen).to(fused.weight.device, fused.weight.dtype)
    want, got = original(x).float(), fused(x).float()
    return want.shape == got.shape and torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def fuse_rms_norms(model: nn.Module) -> int:
    """Replace the model's RMSNorm layers by `FusedRMSNorm` where the formula is the same; returns how many."""
    verdict: dict[type, bool] = {}  # each class checked once
    replaced = 0
    for name, module in list(model.named_modules()):
        fused = _candidate(module)
        if fused is None:
            continue
        cls = type(module)
        if cls not in verdict:
            verdict[cls] = _same_output(module, fused)
        if verdict[cls]:
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, fused)
            replaced += 1
    return replaced
