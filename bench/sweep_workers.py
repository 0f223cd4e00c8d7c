"""Sweep workers on one study: trials per second with 1, 2 and 4 worker processes, on PostgreSQL and on
the sweep directory's SQLite (replay engine on the real DeBERTa/MNLI curves, CPU).

    .venv/bin/python bench/sweep_workers.py [--trials 40] [--delay 0.02] [--workers 1,2,4]

Each run is `tunepilot sweep SWEEP.yaml --gpus 0,..,N-1 [--storage URL]` (N worker processes; the
GPU indices only set CUDA_VISIBLE_DEVICES, which the replay engine ignores). Each curve point sleeps
`--delay` seconds, standing in for training, so more workers can overlap it. Trials per second are
counted between the first trial's start and the last trial's end in the study (process start-up is
in `wall`). PostgreSQL is a throwaway server (tests/postgres.py), a fresh database per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT.parent / "shared" / "data" / "lm-tuning-curves" / "deberta-base_mnli.jsonl"
sys.path.insert(0, str(ROOT / "tests"))


def sweep_file(where: Path, trials: int, delay: float) -> Path:
    spec = {
        "space": {
            "learning_rate": {"low": 1e-6, "high": 1e-3, "log": True},
            "per_device_train_batch_size": [16, 32, 48, 64],
            "warmup_ratio": {"low": 0.0, "high": 0.2},
        },
        "objective": {"metric": "matched", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": trials},
        "engine": {"name": "replay", "curves": str(CURVES), "advance_delay_s": delay},
    }
    path = where / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(path: Path, sweep_dir: Path, workers: int, storage: str | None) -> dict:
    args = ["sweep", str(path), "--dir", str(sweep_dir), "--gpus", ",".join(map(str, range(workers))), "--json"]
    args += ["--storage", storage] if storage else []
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tunepilot.cli.app", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
    body = json.loads(r.stdout)
    trials = optuna.load_study(study_name="sweep", storage=storage or body["storage"]).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in trials)).total_seconds()
    rate = len(done) / span
    return {"complete": len(done), "asked": len(trials), "span_s": span, "wall_s": wall, "trials_per_s": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--delay", type=float, default=0.02)
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args()
    counts = [int(n) for n in a.workers.split(",")]
    from postgres import fresh_database, postgres_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as server:
        path = sweep_file(Path(tmp), a.trials, a.delay)
        for backend in ("postgresql", "sqlite"):
            for n in counts:
                url = fresh_database(server) if backend == "postgresql" else None
                r = run(path, Path(tmp) / f"{backend}-{n}", n, url)
                rows.append({"storage": backend, "workers": n, **r})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| storage | workers | trials | trials/s | vs 1 worker | span s | wall s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["storage"] == r["storage"] and b["workers"] == counts[0])
        print(
            f"| {r['storage']} | {r['workers']} | {r['complete']} | {r['trials_per_s']:.2f} | "
            f"{r['trials_per_s'] / base['trials_per_s']:.2f}x | {r['span_s']:.1f} | {r['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
