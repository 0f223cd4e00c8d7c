"""Eager packed engine: the decoder's RMSNorm layers become one fused kernel each, with the same output."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GemmaForCausalLM

from tunepilot.engines.packed.norms import FusedRMSNorm, fuse_rms_norms
from tunepilot.testing import tiny_config


def norms(model) -> list[str]:
    return [type(m).__name__ for _, m in model.named_modules() if type(m).__name__.endswith("RMSNorm")]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_norms_give_the_models_logits_and_gradients(arch):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(tiny_config(arch)).float()
    fused = AutoModelForCausalLM.from_config(tiny_config(arch)).float()
    fused.load_state_dict(reference.state_dict())
    layers = reference.config.num_hidden_layers
    assert fuse_rms_norms(fused) == 2 * layers + 1  # two per decoder layer and the final norm
    assert set(norms(fused)) == {"FusedRMSNorm"}
    assert fused.state_dict().keys() == reference.state_dict().keys()  # same names, same weights
    ids = torch.randint(0, reference.config.vocab_size, (2, 12))
    out = [m(input_ids=ids, labels=ids) for m in (reference, fused)]
    torch.testing.assert_close(out[1].logits, out[0].logits, rtol=1e-5, atol=1e-5)
    for o in out:
        o.loss.backward()
    for (name, p), q in zip(reference.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_rounds_where_transformers_rounds():
    """Normalised in fp32, rounded to bf16, then scaled in bf16: as transformers' RMSNorm does."""
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).to(torch.bfloat16)
    original = model.model.norm
    torch.nn.init.normal_(original.weight, 1.0, 0.3)
    fused = FusedRMSNorm(original.weight, original.variance_epsilon)
    x = torch.randn(4, 7, original.weight.shape[0]).to(torch.bfloat16) * 3
    want, got = original(x), fused(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 2**-7 * want.float().abs().max()  # about a bf16 ulp


def test_a_norm_with_another_formula_stays():
    """Gemma scales by (1 + weight) in fp32: the check on a random input refuses to replace it."""
    config = GemmaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    model = GemmaForCausalLM(config)
    before = norms(model)
    assert before and fuse_rms_norms(model) == 0 and norms(model) == before
