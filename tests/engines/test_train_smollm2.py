"""Behaviour that needs a pretrained model and real text: SmolLM2-135M on GSM8K, on CPU."""

import pytest

from tunepilot.config import build_config
from tunepilot.engines.run import TrainingRun


@pytest.mark.slow
def test_lora_on_gsm8k_lowers_heldout_eval_loss(smollm2_gguf, smollm2_dir, shared_data, tmp_path):
    config, _ = build_config(
        {
            "model_name_or_path": str(smollm2_gguf),  # the GGUF path itself; loads via the cached conversion
            "dataset": str(shared_data / "gsm8k" / "train.jsonl"),
            "eval_dataset": str(shared_data / "gsm8k" / "test.jsonl"),
            "columns": {"prompt": "question", "response": "answer"},
            "cutoff_len": 256,
            "max_samples": 48,
            "max_eval_samples": 16,
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "eval_steps": 8,
            "lora_rank": 8,
            "output_dir": str(tmp_path / "run"),
        }
    )
    run = TrainingRun(config)
    run.setup()
    before = run.evaluate(0).eval_loss  # LoRA B starts at zero: this is the base model's eval loss
    for _ in run.steps():
        pass
    summary = run.finish().to_json()
    assert summary["status"] == "completed"
    assert summary["best_eval_loss"] < before - 0.05, (before, summary["best_eval_loss"])
