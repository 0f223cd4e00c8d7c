"""How long `diagnose` takes on a 100k-step log (target: under 2 s on this project's 2 CPU cores).

    python bench/diagnose_speed.py [--steps 100000] [--repeats 3]

Writes a synthetic HF Trainer trainer_state.json and a tunepilot metrics.jsonl of the same run (a
noisy falling loss logged every step, an eval every 1,000 steps), then times reading + all rules
(`tunepilot.health.diagnose`), the median of the repeats, for each format.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def write_logs(root: Path, steps: int) -> dict[str, Path]:
    rng = random.Random(0)
    history, stream = [], []
    for s in range(1, steps + 1):
        loss = 0.6 + 1.4 * math.exp(-s / (steps / 5)) + rng.gauss(0, 0.03)
        lr = 2e-4 * min(1.0, s / 1000) * (0.5 + 0.5 * math.cos(math.pi * s / steps))
        history.append({"step": s, "loss": round(loss, 4), "learning_rate": lr, "grad_norm": 0.5, "epoch": s / 10000})
        stream.append({"kind": "train", "step": s, "loss": loss, "lr": lr, "grad_norm": 0.5, "epoch": s / 10000})
        if s % 1000 == 0:
            ev = 0.7 + 1.3 * math.exp(-s / (steps / 5))
            history.append({"step": s, "eval_loss": ev, "epoch": s / 10000})
            stream.append({"kind": "eval", "step": s, "eval_loss": ev, "metrics": {}, "epoch": s / 10000})
    hf = root / "hf" / "trainer_state.json"
    hf.parent.mkdir(parents=True)
    hf.write_text(json.dumps({"log_history": history, "global_step": steps, "max_steps": steps, "logging_steps": 1}))
    tp = root / "tp" / "metrics.jsonl"
    tp.parent.mkdir(parents=True)
    tp.write_text("".join(json.dumps(r) + "\n" for r in stream))
    return {"hf_trainer_state": hf, "tunepilot": tp}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from tunepilot.health.diagnose import diagnose
    from tunepilot.logs import read_log

    with tempfile.TemporaryDirectory() as tmp:
        for name, path in write_logs(Path(tmp), args.steps).items():
            times, verdict = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                verdict = diagnose(read_log(path)).verdict
                times.append(time.perf_counter() - started)
            print(
                f"{name}: {args.steps} steps, diagnose {statistics.median(times):.2f} s "
                f"(median of {args.repeats}; min {min(times):.2f} s), verdict {verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
