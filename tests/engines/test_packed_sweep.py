"""`tunepilot sweep` with `engine: packed`: a real sweep on CPU, trials in slots on one tiny base model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.sweeps import sweep_cli
from tunepilot.cli.app import app
from tunepilot.stream import EvalPoint, TrainStep, read_stream


def write_chat(path, n: int, seed: int = 0):
    lines = []
    for i in range(n):
        a, b = (i * 7 + seed) % 13, (i * 5 + 3 * seed) % 11
        messages = [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}"},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sweep_with_the_packed_engine_runs_trials_in_slots(tiny_model, tmp_path):
    base = {
        "model_name_or_path": str(tiny_model),
        "dataset": str(write_chat(tmp_path / "train.jsonl", 24)),
        "eval_dataset": str(write_chat(tmp_path / "eval.jsonl", 6, seed=1)),
        "cutoff_len": 48,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "lora_rank": 4,
        "device": "cpu",
    }
    sweep = {
        "base": base,
        "space": {
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "lora_rank": [2, 4, 8],
            "gradient_accumulation_steps": [1, 2],
        },
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": 5},
        "engine": {"name": "packed", "slots": 3, "compile": "auto"},  # auto: eager on CPU
    }
    body = sweep_cli(sweep, tmp_path)
    rows = body["leaderboard"]
    assert len(rows) == 5 and all(r["state"] == "complete" for r in rows), rows
    assert all(r["steps"] == 4 and r["tokens"] > 0 for r in rows)
    summaries = sorted((tmp_path / "sw").rglob("summary.json"))
    assert len(summaries) == 5
    for summary in summaries:
        s = json.loads(summary.read_text())
        assert s["engine"] == "packed" and s["status"] == "completed" and s["best_eval_loss"] is not None
        records = read_stream(summary.parent / "metrics.jsonl")
        assert [r.step for r in records if isinstance(r, TrainStep)] == [1, 2, 3, 4]
        assert any(isinstance(r, EvalPoint) for r in records)
        assert (summary.parent / "adapter" / "adapter_config.json").exists()
    # where the engine's time went: every phase of this sweep ran, and the split is in the JSON result
    assert body["engine_slots"] == 3 and body["engine_compiled"] is False  # compile defaults to off
    split = body["engine_seconds"]
    assert set(split) == {"load", "start", "train", "eval", "export"}
    assert all(v > 0 for v in split.values()), split
    path = tmp_path / "sweep.yaml"  # what sweep_cli wrote
    shown = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "sw")])  # resumes: all done
    assert shown.exit_code == 0 and "engine time: load" in shown.output, shown.output[-2000:]
