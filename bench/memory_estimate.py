"""Measured peak GPU memory of real training steps vs `tunepilot.memory.estimate_memory`.

Random-weight models built from published config.json files (tests/fixtures/model_configs), bf16,
LoRA through tunepilot.models.apply_method (the engine's own setup), AdamW and the standard engine's
loss (fp32 cross-entropy over all positions). Three optimizer steps per setting; the peak is
`torch.cuda.max_memory_allocated`, compared with the estimate minus its constant CUDA-context
overhead (which the allocator does not see).

    python bench/memory_estimate.py [--settings all|quick] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tunepilot.config import MethodSettings, ModelSettings
from tunepilot.memory import GIB, MemoryPlan, estimate_memory
from tunepilot.modelinfo import read_model_info
from tunepilot.models import apply_method

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of the code path only
CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "model_configs"
# (model, method, micro-batch, sequence length, gradient checkpointing)
SETTINGS = [
    ("Qwen2.5-0.5B", "lora", 4, 1024, False),
    ("Qwen2.5-0.5B", "lora", 8, 2048, False),
    ("Llama-3.2-1B", "lora", 4, 1024, False),
    ("Llama-3.2-1B", "lora", 2, 4096, False),
    ("Llama-3.2-1B", "lora", 8, 2048, True),
    ("Qwen2.5-0.5B", "full", 4, 1024, False),
]


def build(name: str, method: str, checkpointing: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(CONFIGS / name)
    config._attn_implementation = "sdpa"
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model_settings = ModelSettings(name_or_path=str(CONFIGS / name), gradient_checkpointing=checkpointing)
    method_settings = MethodSettings(finetuning_type="full" if method == "full" else "lora", lora_rank=16)
    return apply_method(model, method_settings, model_settings), config.vocab_size


def measure(name: str, method: str, micro: int, seq: int, ckpt: bool, steps: int = 3) -> dict:
    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    model, vocab = build(name, method, ckpt)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (micro, seq), device=DEVICE)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        del logits, loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() if cuda else float("nan")
    del model, optimizer, params
    info = read_model_info(CONFIGS / name)
    est = estimate_memory(
        info, MemoryPlan(method=method, lora_rank=16, micro_batch=micro, seq_len=seq, gradient_checkpointing=ckpt)
    )
    predicted = est.total - est.parts["overhead"]
    return {
        "model": name,
        "method": method,
        "micro_batch": micro,
        "seq_len": seq,
        "checkpointing": ckpt,
        "measured_gib": round(peak / GIB, 3),
        "reserved_gib": round(reserved / GIB, 3),
        "estimate_gib": round(predicted / GIB, 3),
        "ratio": round(predicted / peak, 3),
        "parts_gib": {k: round(v / GIB, 3) for k, v in est.parts.items()},
        "s_per_step": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", choices=["all", "smoke"], default="all")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    smoke = [("SmolLM2-135M", "lora", 1, 32, True), ("SmolLM2-135M", "full", 1, 32, False)]
    for setting in SETTINGS if args.settings == "all" else smoke:
        try:
            rows.append(measure(*setting))
        except torch.OutOfMemoryError:
            rows.append(
                {
                    "model": setting[0],
                    "method": setting[1],
                    "micro_batch": setting[2],
                    "seq_len": setting[3],
                    "checkpointing": setting[4],
                    "error": "out of memory",
                }
            )
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "unknown",
    }
    print("| model | method | micro x seq | ckpt | measured peak GiB | estimate GiB | estimate/measured |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['model']} | {r['method']} | {r['micro_batch']} x {r['seq_len']} | {r['checkpointing']} | "
                f"OOM | - | - |"
            )
            continue
        print(
            f"| {r['model']} | {r['method']} | {r['micro_batch']} x {r['seq_len']} | {r['checkpointing']} | "
            f"{r['measured_gib']:.2f} | {r['estimate_gib']:.2f} | {r['ratio']:.2f} |"
        )
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
