"""Validation throughput: `validate_data` (parse, checks, template, batched fast tokenization, masking,
dataset checks) versus a naive per-record loop (chat template + two tokenizer calls per record, the
usual hand-written SFT preprocessing with no checks), on GSM8K-size records, in the same run.

    python bench/validate_speed.py --copies 4

GSM8K train is written `--copies` times to a temporary JSONL with each copy's questions suffixed
" (copy k)" so that records stay distinct (duplicates would add findings, not work). Prints a
Markdown section for bench/BENCHMARKS.md: wall and CPU seconds, records/min, the ratio, and the peak
RSS at two sizes (streaming: memory should not grow with the file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import smollm2_gguf_path

    from tunepilot.models import converted_gguf_dir

    return AutoTokenizer.from_pretrained(converted_gguf_dir(smollm2_gguf_path()))


def write_copies(path: Path, copies: int) -> int:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]
    with path.open("w") as f:
        for k in range(copies):
            for r in rows:
                q = r["question"] if k == 0 else f"{r['question']} (copy {k})"
                f.write(json.dumps({"question": q, "answer": r["answer"]}) + "\n")
    return copies * len(rows)


def naive(path: Path, tokenizer) -> int:
    """Per record: render prompt and full text with the chat template, tokenize both, mask the prompt."""
    n = 0
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            msgs = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
            prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs, tokenize=False)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False)["input_ids"][:1024]
            labels = [-100] * len(p_ids) + ids[len(p_ids) :]
            n += len(labels) > 0
    return n


def ours(path: Path, tokenizer) -> int:
    from tunepilot.config import DataSettings
    from tunepilot.data.validate import validate_data

    report = validate_data(DataSettings(train=str(path)), tokenizer)
    assert report.errors == 0
    return report.stats["train"]["records"]


def timed(fn, *args) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn(*args)
    return n, time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mb(copies: int) -> float:
    """Peak RSS of a fresh process validating `copies` copies (ours only)."""
    cmd = [sys.executable, str(Path(__file__)), "--copies", str(copies), "--rss-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--rss-only", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tok = smollm2_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gsm8k_copies.jsonl"
        records = write_copies(path, args.copies)
        if args.rss_only:
            ours(path, tok)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return
        results = {
            "tunepilot validate_data": timed(ours, path, tok),
            "naive per-record loop": timed(naive, path, tok),
        }
    report(records, results, args.copies)


def report(records: int, results: dict, copies: int) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    load = os.getloadavg()
    print(
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; "
        f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} / {load[1]:.1f} (shared machine)"
    )
    print(f"- Command: `python bench/validate_speed.py --copies {copies}`; {records:,} records, SmolLM2 tokenizer")
    print("\n| path | records | wall s | CPU s | records/min (wall) | records per CPU-minute |")
    print("|---|---|---|---|---|---|")
    for name, (n, wall, cpu) in results.items():
        print(f"| {name} | {n:,} | {wall:.1f} | {cpu:.1f} | {n / wall * 60:,.0f} | {n / cpu * 60:,.0f} |")
    (_, w1, c1), (_, w0, c0) = results.values()
    print(f"\nRatio (wall): {w0 / w1:.2f}x; ratio (CPU): {c0 / c1:.2f}x")
    small, large = peak_rss_mb(1), peak_rss_mb(copies)
    print(f"Peak RSS: {small:.0f} MB at {records // copies:,} records, {large:.0f} MB at {records:,} records")


if __name__ == "__main__":
    main()
