"""A real (tiny, CPU) training run with a far too high learning rate is stopped by the monitor."""

from __future__ import annotations

import json

from tunepilot.config import build_config
from tunepilot.stream import Event, TrainStep, read_stream


def write_data(path, n):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i % 13} + {i % 7}?"},
                {"role": "assistant", "content": f"{i % 13} + {i % 7} = {i % 13 + i % 7}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_far_too_high_lr_is_stopped_before_the_planned_end_with_the_reason(tiny_model, tmp_path):
    from tunepilot.engines.run import train

    raw = {
        "model_name_or_path": str(tiny_model),
        "dataset": str(write_data(tmp_path / "train.jsonl", 64)),
        "cutoff_len": 48,
        "max_steps": 40,
        "per_device_train_batch_size": 4,
        "learning_rate": 5.0,
        "lora_rank": 4,
        "lr_scheduler_type": "constant",
        "output_dir": str(tmp_path / "run"),
        "finetuning_type": "full",
    }
    config, _ = build_config(raw)
    summary = train(config).to_json()
    assert summary["status"] == "stopped" and summary["steps"] < 40
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    reason = saved["stop_reason"]
    assert reason["code"] == "health.stop" and "health monitor" in reason["message"]
    records = read_stream(tmp_path / "run" / "metrics.jsonl")
    stops = [r for r in records if isinstance(r, Event) and r.code == "health.stop"]
    assert len(stops) == 1 and stops[0].data["rule"] in ("nan_inf", "divergence", "zero_collapse")
    assert max(r.step for r in records if isinstance(r, TrainStep)) == stops[0].step
