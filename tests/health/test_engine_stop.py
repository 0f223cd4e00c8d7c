"""A real (tiny, CPU) training run with a far too high learning rate is stopped by the monitor."""

from __future__ import annotations

import json

import pytest

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


@pytest.mark.slow
def test_a_run_worse_than_the_untrained_model_never_ends_completed(smollm2_dir, shared_data, tmp_path):
    """The issue's case on the real SmolLM2: learning rate 0.3 (about 190x the usual LoRA value) on
    GSM8K. The step-0 eval is the untrained baseline; the run is stopped by the monitor or ends failed
    (exit 1) with the reason, and its 'best' checkpoint is never restored as a result."""
    import yaml
    from typer.testing import CliRunner

    from tunepilot.cli.app import app

    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:40]]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": r["question"], "output": r["answer"]}) for r in rows))
    raw = {
        "model_name_or_path": str(smollm2_dir),
        "dataset": str(data),
        "val_size": 0.2,
        "cutoff_len": 160,
        "max_steps": 6,
        "eval_steps": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 0.3,
        "lr_scheduler_type": "constant",
        "lora_rank": 8,
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "lr03.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["train", str(path), "--json"])
    body = json.loads(result.stdout[result.stdout.index("{") :])
    assert result.exit_code == 1, result.output[-3000:]
    assert body["status"] in ("stopped", "failed") and not body["restored_best"]
    assert body["stop_reason"]["code"] in ("health.stop", "worse_than_untrained"), body["stop_reason"]
    evals = [r for r in read_stream(tmp_path / "run" / "metrics.jsonl") if not isinstance(r, (TrainStep, Event))]
    assert evals[0].step == 0 and all(e.eval_loss > evals[0].eval_loss for e in evals[1:])
    diagnosed = CliRunner().invoke(app, ["diagnose", str(tmp_path / "run"), "--json"])
    assert json.loads(diagnosed.stdout[diagnosed.stdout.index("{") :])["verdict"] == "diverged"
