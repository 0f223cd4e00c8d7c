"""Generation throughput of `tunepilot evaluate`'s batched path versus a naive per-record loop.

    python bench/eval_speed.py --records 256 --max-new-tokens 128 --batch-size 64 --baseline-records 16

The model is random-weight with a published shape (Qwen2.5-0.5B by default; no download), so greedy
decoding never meets an end-of-turn token and every record generates exactly `max-new-tokens`
tokens: both paths do the same amount of work per record. Prompts are real GSM8K test questions
rendered through a ChatML template by a small BPE tokenizer (its ids are a subset of the model's
vocabulary; ids it does not know decode to nothing, which does not change the work).

Baseline (same run, same model, same prompts): one `model.generate` per record, KV cache on, i.e.
the loop most evaluation scripts write. It runs on `--baseline-records` records spread over the
set (every record costs the same number of decode steps), and its rate is compared per record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunepilot.evaluate.examples import fixed_subset  # noqa: E402
from tunepilot.evaluate.generate import generate  # noqa: E402
from tunepilot.testing import _CORPUS, tiny_tokenizer  # noqa: E402

# Published model configurations (config.json of the hub repositories), as dicts: no download.
SHAPES = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        model_type="qwen2",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def questions(path: Path, n: int) -> tuple[list[str], str]:
    """GSM8K test questions; where the shared data is not on the machine, word salad of GSM8K-like
    length (30-90 words) from a fixed seed, so the run still measures the same kind of workload."""
    for candidate in (path, ROOT / "shared" / "data" / "gsm8k" / "test.jsonl"):
        if candidate.is_file():
            rows = [json.loads(line) for line in candidate.read_text().splitlines()[:n]]
            return [r["question"] for r in rows], f"gsm8k test (first {n})"
    rng = random.Random(0)
    words = " ".join(_CORPUS).split()
    return [" ".join(rng.choices(words, k=rng.randint(30, 90))) for _ in range(n)], "synthetic, 30-90 words"


def render(tokenizer, texts: list[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def scan(model, tokenizer, prompts: list[str], sizes: list[int], steps: int = 32) -> dict[str, float]:
    """Milliseconds per decode step for one batch of each size: (time for `steps` tokens - time for
    1 token) / (steps - 1), so the prefill is left out. Shows how a step's cost grows with the batch."""
    out = {}
    for size in sizes:
        batch = (prompts * (size // len(prompts) + 1))[:size]
        _, t1 = timed(lambda b=batch: generate(model, tokenizer, b, 1, len(b)))
        _, tn = timed(lambda b=batch: generate(model, tokenizer, b, steps, len(b)))
        out[str(size)] = round(1000 * (tn - t1) / (steps - 1), 2)
        print(f"batch {size}: {out[str(size)]} ms per decode step", flush=True)
    return out


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--baseline-records", type=int, default=16)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
    p.add_argument("--scan", default="", help="batch sizes to time one batch at (ms per decode step), e.g. 1,64")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = tiny_tokenizer()
    model = build_model(args.shape, device, dtype)
    texts, prompt_source = questions(args.data, args.records)
    prompts = render(tokenizer, texts)
    generate(model, tokenizer, prompts[:4], 4, 4)  # warm-up: CUDA context, kernels
    step_ms = scan(model, tokenizer, prompts, [int(x) for x in args.scan.split(",") if x]) if args.scan else {}

    n_new = args.max_new_tokens
    batched, t_batched = timed(lambda: generate(model, tokenizer, prompts, n_new, args.batch_size))
    sample = fixed_subset(prompts, args.baseline_records)
    naive, t_naive = timed(lambda: [generate(model, tokenizer, [q], n_new, 1)[0] for q in sample])

    rate_batched, rate_naive = len(prompts) / t_batched, len(sample) / t_naive
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": os.environ.get("BENCH_COMMIT") or commit(),
        "torch": torch.__version__,
        "shape": args.shape,
        "dtype": str(dtype).replace("torch.", ""),
        "records": len(prompts),
        "prompts": prompt_source,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "prompt_tokens_mean": round(sum(len(tokenizer(q)["input_ids"]) for q in prompts) / len(prompts), 1),
        "batched_seconds": round(t_batched, 2),
        "batched_records_per_s": round(rate_batched, 2),
        "batched_new_tokens_per_s": round(sum(a.tokens for a in batched) / t_batched, 1),
        "baseline_records": len(sample),
        "baseline_seconds": round(t_naive, 2),
        "baseline_records_per_s": round(rate_naive, 3),
        "baseline_new_tokens_per_s": round(sum(a.tokens for a in naive) / t_naive, 1),
        "baseline_seconds_for_all_records": round(len(prompts) / rate_naive, 1),
        "speedup": round(rate_batched / rate_naive, 1),
        "decode_step_ms_by_batch": step_ms,
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
