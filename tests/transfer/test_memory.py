from __future__ import annotations

from dataclasses import replace

import pytest

from tunepilot.memory import GIB, MemoryPlan, activation_bytes_per_token_layer, estimate_memory
from tunepilot.modelinfo import from_config_dict, read_model_info


def test_each_lever_lowers_the_part_it_should(model_configs):
    info = read_model_info(model_configs / "Llama-3.1-8B")
    base = MemoryPlan(method="lora", micro_batch=4, seq_len=2048)
    ref = estimate_memory(info, base).parts
    ckpt = estimate_memory(info, replace(base, gradient_checkpointing=True)).parts
    assert ckpt["activations"] < ref["activations"] / 5
    q = estimate_memory(info, replace(base, method="qlora")).parts
    assert 2.5 < ref["weights"] / q["weights"] < 4  # embeddings and head stay 16-bit
    half = estimate_memory(info, replace(base, seq_len=1024)).parts
    assert half["logits"] == pytest.approx(ref["logits"] / 2)
    full = estimate_memory(info, replace(base, method="full")).parts
    assert full["optimizer"] == pytest.approx(2 * full["weights"])


def test_suggestions_fit_and_fitting_plans_have_none(model_configs):
    info = read_model_info(model_configs / "Llama-3.1-8B")
    plan = MemoryPlan(method="lora", micro_batch=8, seq_len=4096)
    est = estimate_memory(info, plan, gpu_memory_gb=40)
    assert est.fits is False and est.suggestions
    gib = [float(s.rsplit("-> ", 1)[1].split()[0]) for s in est.suggestions if "->" in s]
    assert gib and all(g <= 40 * 0.9 for g in gib)
    small = estimate_memory(
        info,
        MemoryPlan(method="qlora", micro_batch=1, seq_len=512, gradient_checkpointing=True),
        gpu_memory_gb=40,
    )
    assert small.fits is True and small.suggestions == []


def test_70b_full_finetune_on_one_gpu_says_shard(model_configs):
    info = read_model_info(model_configs / "Llama-3.1-70B")
    est = estimate_memory(info, MemoryPlan(method="full", micro_batch=1, seq_len=512), gpu_memory_gb=80)
    assert not est.fits and est.suggestions[0].startswith("method: qlora")
    tiny_gpu = estimate_memory(info, MemoryPlan(method="full", micro_batch=1, seq_len=512), gpu_memory_gb=24)
    assert "shard" in tiny_gpu.suggestions[0]
    sharded = estimate_memory(info, MemoryPlan(method="full", micro_batch=1, seq_len=512, shard_gpus=8))
    assert sharded.parts["optimizer"] == pytest.approx(est.parts["optimizer"] / 8)
    assert est.total > 500 * GIB


@pytest.mark.parametrize("method", ["lora", "full"])
def test_activation_coefficients_match_autograd_saved_tensors(method):
    """Count what autograd keeps for a bf16 Llama layer and compare with the formula (per token, layer)."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved_bytes(layers: int) -> int:
        config = LlamaConfig(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=1,
            vocab_size=128,
        )
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        ids = torch.randint(0, 128, (2, 32))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    measured = (saved_bytes(3) - saved_bytes(1)) / 2 / 64
    # CPU SDPA (math kernel) also keeps s x s attention tensors (bf16; 2 with frozen q/k/v, 4 when they
    # train); GPU flash / memory-efficient kernels do not, so the formula leaves them out.
    attention_matrix = (2 if method == "lora" else 4) * 2 * 4 * 32
    info = from_config_dict(
        {
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "vocab_size": 128,
        }
    )
    predicted = activation_bytes_per_token_layer(info, MemoryPlan(method=method, lora_rank=8))
    assert measured - attention_matrix == pytest.approx(predicted, rel=0.05)
