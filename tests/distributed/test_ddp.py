"""Data-parallel training on CPU (gloo, 2 processes through torchrun): the same run as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tunepilot.stream import EvalPoint, TrainStep, read_stream
from tunepilot.testing import write_arithmetic_chat


def _config(tmp_path, tiny_model, out: str) -> str:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_arithmetic_chat(data, 32, 0, answer="{a} + {b} = {c}. #### {c}")
        write_arithmetic_chat(tmp_path / "eval.jsonl", 6, 1, answer="{a} + {b} = {c}. #### {c}")
    raw = {"model_name_or_path": str(tiny_model), "dataset": str(data), "eval_dataset": str(tmp_path / "eval.jsonl"),
           "cutoff_len": 48, "max_steps": 6, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
           "learning_rate": 3e-3, "eval_steps": 3, "lora_rank": 4, "lora_dropout": 0.0, "device": "cpu",
           "output_dir": str(tmp_path / out), "health": {"enabled": False}}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _train(config: str, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "tunepilot.cli.app", "train", config, "--json", *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_two_processes_train_the_same_run_as_one(tmp_path, tiny_model):
    """Same global batches (rank r takes every 2nd micro-batch of a step), DDP sums the gradients:
    the loss curve, eval loss and adapter equal one process's; rank 0 writes the one stream."""
    one = _train(_config(tmp_path, tiny_model, "one"))
    two = _train(_config(tmp_path, tiny_model, "two"), "--nproc", "2")
    assert one["ok"] and two["ok"] and two["steps"] == one["steps"] == 6 and two["tokens"] == one["tokens"]
    streams = [read_stream(tmp_path / d / "metrics.jsonl") for d in ("one", "two")]
    train = [[(r.step, r.loss, r.grad_norm) for r in s if isinstance(r, TrainStep)] for s in streams]
    assert [t[0] for t in train[1]] == [1, 2, 3, 4, 5, 6]  # one stream: no step written twice
    for a, b in zip(*train, strict=True):
        assert b[1] == pytest.approx(a[1], abs=1e-4) and b[2] == pytest.approx(a[2], abs=1e-4)
    evals = [[r.eval_loss for r in s if isinstance(r, EvalPoint)] for s in streams]
    assert evals[1] == pytest.approx(evals[0], abs=1e-4) and len(evals[0]) == 2
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    PeftModel.from_pretrained(base, str(tmp_path / "two" / "adapter"))  # a normal PEFT adapter
    weights = [load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])
