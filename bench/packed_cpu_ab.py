"""The packed engine on CPU, this tree against an earlier commit, interleaved in one run (A/B).

    python bench/packed_cpu_ab.py --baseline 8dcf095 --rounds 3

A small random Llama (hidden 256, 4 layers, vocab 4,096), K=4 LoRA trials (r=8, all linear layers,
micro-batch 4, sequence 128) trained to the end of their 24-step schedules with evaluations at half
and end. Timed: the `advance()` loop, from the first packed step to the last outcome (trial starts,
including the untrained-baseline eval this tree adds, are not in it). Each round runs the baseline
commit (a `git worktree`) and this tree in fresh processes, alternating, so machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from transformers import AutoModelForCausalLM, LlamaConfig
from tunepilot.config import build_config
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.packed.engine import PackedEngine

torch.manual_seed(0)
torch.set_num_threads(2)
cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
model_dir = sys.argv[2]
AutoModelForCausalLM.from_config(cfg).save_pretrained(model_dir)

def config(**kw):
    raw = {"model_name_or_path": model_dir, "dataset": "synthetic", "cutoff_len": 128, "max_steps": 24,
           "per_device_train_batch_size": 4, "lora_rank": 8, "lora_target": "all-linear", "lora_dropout": 0.0,
           "per_device_eval_batch_size": 8, **kw}
    return build_config(raw, check_paths=False)[0]

g = torch.Generator().manual_seed(1)
def examples(n):
    out = []
    for _ in range(n):
        ids = torch.randint(3, 4096, (128,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 64 + ids[64:]})
    return out
train, evals = examples(96), examples(16)
engine = PackedEngine(config(), 4, model=AutoModelForCausalLM.from_pretrained(model_dir), pad_id=0,
                      data=lambda c: (train, evals))
for n in range(4):
    engine.start(TrialSpec(n, {}, config(learning_rate=1e-4 * (n + 1)), None, report_fractions=(0.5, 1.0)))
start = time.perf_counter()
done = 0
while engine.active:
    done += sum(isinstance(p, Outcome) for p in engine.advance())
print(json.dumps({"seconds": time.perf_counter() - start, "outcomes": done}))
"""


def run(src: Path, workdir: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(workdir / "model")], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="8dcf095", help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            times: dict[str, list[float]] = {"baseline": [], "this tree": []}
            for _ in range(args.rounds):
                times["baseline"].append(run(base / "src", tmp))
                times["this tree"].append(run(ROOT / "src", tmp))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"{name}: median {medians[name]:.2f} s over {len(values)} runs ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"this tree / baseline: {medians['this tree'] / medians['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
