"""Put multi-adapter layers into a base model, and give a slot its adapters or take them away.

Every `nn.Linear` of the base model except the output projection (lm_head) is replaced once by a
`MultiLoraLinear` that wraps it, the way PEFT replaces target modules. A trial then gets adapters
in the layers its `lora_target` names; the other wrapped layers pass its rows through unchanged.
Target names follow PEFT: `all-linear`, or module names matched as the full name or its last dotted
parts (`q_proj` matches `model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tunepilot.engines.packed.lora import MultiLoraLinear, PackContext
from tunepilot.engines.packed.stack import LoraAdapter, LoraBank
from tunepilot.errors import UserError


def wrap_linears(model: nn.Module, context: PackContext) -> dict[str, MultiLoraLinear]:
    """Freeze the model and wrap its linear layers; returns wrappers by (PEFT-style) module name."""
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]
    linears = [model.get_submodule(n) for n in names]
    device = linears[0].weight.device if linears else None
    context.bank = LoraBank([(m.in_features, m.out_features) for m in linears], device)
    wrapped: dict[str, MultiLoraLinear] = {}
    for index, (name, linear) in enumerate(zip(names, linears, strict=True)):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = MultiLoraLinear(linear, context, context.bank, index)
        setattr(parent, leaf, wrapper)
        wrapped[name] = wrapper
    return wrapped


def match_targets(wrapped: dict[str, MultiLoraLinear], targets: list[str]) -> list[str]:
    """The wrapped module names a trial's `lora_target` selects; an unmatched name is a user error."""
    if "all-linear" in targets:
        return list(wrapped)
    chosen, unmatched = [], []
    for t in targets:
        hits = [n for n in wrapped if n == t or n.endswith("." + t)]
        if not hits:
            unmatched.append(t)
        chosen.extend(h for h in hits if h not in chosen)
    if unmatched:
        leaves = sorted({n.rpartition(".")[2] for n in wrapped})
        raise UserError(
            f"method.lora_target: {', '.join(unmatched)} match no linear layer of the model; "
            f"use all-linear or some of: {', '.join(leaves)}"
        )
    return [n for n in wrapped if n in chosen]  # model order: the init draws follow it


def add_adapters(
    wrapped: dict[str, MultiLoraLinear],
    names: list[str],
    slot: int,
    rank: int,
    alpha: float,
    use_rslora: bool,
    dropout: float,
    seed: int,
) -> None:
    """Fresh adapters for `slot` in the named layers, initialised from the trial's own seed. The bank
    makes room first; a caller with optimizer state on the bank calls `reserve` before."""
    reserve(wrapped, slot + 1, rank)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    for name in names:  # model order: the init draws follow it
        wrapped[name].add_adapter(slot, LoraAdapter(rank, alpha, use_rslora, dropout), gen)


def reserve(wrapped: dict[str, MultiLoraLinear], slots: int, rank: int) -> Callable | None:
    """Room in the bank for `slots` slots of rank `rank`. If it had to be re-laid out, every adapter's
    views are re-pointed, and the function that moves optimizer state to the new layout is returned."""
    if not wrapped:
        return None
    relayout = next(iter(wrapped.values())).stack.bank.reserve(slots, rank)
    if relayout is not None:
        for layer in wrapped.values():
            for slot in layer.stack.adapters:
                layer.stack.bind(slot)
    return relayout


def remove_adapters(wrapped: dict[str, MultiLoraLinear], slot: int) -> None:
    """Take a slot's adapters out of every layer; its row of the bank (weights and gradients) becomes
    zero, the padding a later trial in this slot needs."""
    for layer in wrapped.values():
        layer.stack.forget(slot)
    if wrapped:
        next(iter(wrapped.values())).stack.bank.clear(slot)


def adapter_state(wrapped: dict[str, MultiLoraLinear], slot: int) -> dict[str, torch.Tensor]:
    """A slot's weights under PEFT's saved key names (`base_model.model.<module>.lora_A.weight`).

    Gathered on the device and copied to the host once: one copy per tensor would synchronise the
    host with the GPU 2 x (adapted layers) times (336 for all-linear Qwen2.5-0.5B) at every report."""
    keys, tensors = [], []
    for name, layer in wrapped.items():
        ad = layer.stack.adapters.get(slot)
        if ad is not None:
            keys += [f"base_model.model.{name}.lora_A.weight", f"base_model.model.{name}.lora_B.weight"]
            tensors += [ad.lora_A.detach(), ad.lora_B.detach()]
    if not tensors:
        return {}
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()  # reshape: row-major, B as [out, r]
    parts = flat.split([t.numel() for t in tensors])
    # clone: separate storages (safetensors refuses tensors that share memory)
    return {k: part.view(t.shape).clone() for k, part, t in zip(keys, parts, tensors, strict=True)}
