"""Data-parallel training on CPU (gloo, 2 processes through torchrun): the same run as one process."""

from __future__ import annotations

import contextlib
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
    raw = {
        "model_name_or_path": str(tiny_model),
        "dataset": str(data),
        "eval_dataset": str(tmp_path / "eval.jsonl"),
        "cutoff_len": 48,
        "max_steps": 6,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 3e-3,
        "eval_steps": 3,
        "lora_rank": 4,
        "lora_dropout": 0.0,
        "device": "cpu",
        "output_dir": str(tmp_path / out),
        "health": {"enabled": False},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _edit(path: str, **keys) -> None:
    with open(path) as f:
        raw = yaml.safe_load(f)
    with open(path, "w") as f:
        f.write(yaml.safe_dump({**raw, **keys}))


def _train(config: str, *extra: str) -> dict:
    return _cli("train", config, *extra)


def _cli(command: str, config: str, *extra: str) -> dict:
    """`tunepilot COMMAND CONFIG --json ...` in a fresh process (not under a launcher); its envelope."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "tunepilot.cli.app", command, config, "--json", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_two_processes_train_the_same_run_as_one(tmp_path, tiny_model, checkpointing):
    """Same global batches (rank r takes every 2nd micro-batch of a step), DDP sums the gradients:
    the loss curve, eval loss and adapter equal one process's; rank 0 writes the one stream. With
    gradient checkpointing too."""
    one = _train(_config(tmp_path, tiny_model, "one"))
    two_path = _config(tmp_path, tiny_model, "two")
    _edit(two_path, gradient_checkpointing=checkpointing)
    two = _train(two_path, "--nproc", "2")
    assert one["ok"] and two["ok"] and two["steps"] == one["steps"] == 6 and two["tokens"] == one["tokens"]
    streams = [read_stream(tmp_path / d / "metrics.jsonl") for d in ("one", "two")]
    train = [[(r.step, r.loss, r.grad_norm) for r in s if isinstance(r, TrainStep)] for s in streams]
    assert [t[0] for t in train[1]] == [1, 2, 3, 4, 5, 6]  # one stream: no step written twice
    inputs = [[r.input_tokens for r in s if isinstance(r, TrainStep)] for s in streams]
    assert inputs[0] == inputs[1] and inputs[0][-1] > two["tokens"]  # prompts counted too, on all ranks
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


def test_fsdp2_trains_the_same_run_as_one_process(tmp_path, tiny_model):
    """FSDP2 (torch fully_shard per decoder layer) from HF/Axolotl keys: same curve and adapter as one
    process; the checkpoint is sharded (one file per rank)."""
    one = _train(_config(tmp_path, tiny_model, "one"))
    path = _config(tmp_path, tiny_model, "fsdp")
    _edit(path, fsdp="full_shard auto_wrap", fsdp_config={"fsdp_version": 2, "fsdp_reshard_after_forward": True})
    two = _train(path, "--nproc", "2")
    assert two["ok"] and two["steps"] == one["steps"] and two["tokens"] == one["tokens"]
    streams = [read_stream(tmp_path / d / "metrics.jsonl") for d in ("one", "fsdp")]
    losses = [[r.loss for r in s if isinstance(r, TrainStep)] for s in streams]
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    shards = list((tmp_path / "fsdp" / "checkpoint" / "sharded").glob("*.distcp"))
    assert len(shards) == 2
    weights = [load_file_(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "fsdp")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])


def test_a_damaged_fsdp2_checkpoint_is_refused_by_name(tmp_path, tiny_model):
    """--resume under --nproc 2 of an FSDP2 run whose sharded checkpoint has other bytes in its
    .metadata, then in a rank's shard file: exit 2 naming the checkpoint, no traceback."""
    path = _config(tmp_path, tiny_model, "fsdp")
    _edit(path, max_steps=2, eval_steps=2, fsdp="full_shard auto_wrap")
    assert _train(path, "--nproc", "2")["steps"] == 2
    checkpoint = tmp_path / "fsdp" / "checkpoint"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "tunepilot.cli.app", "train", path, "--json", "--nproc", "2", "--resume"]

    def refused(damaged: str) -> None:
        file = checkpoint / "sharded" / damaged
        before = file.read_bytes()
        file.write_bytes(b"\x80\x04not a checkpoint")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        finally:
            file.write_bytes(before)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-4000:]
        assert "checkpoint is damaged" in done.stdout and str(checkpoint) in done.stdout, done.stdout
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-4000:]

    refused(".metadata")  # dcp.load's fallback to per-rank metadata would log tracebacks
    refused("__1_0.distcp")  # dcp.load raises a CheckpointException (a BaseException) on every rank


def load_file_(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigkill_of_the_job_then_resume_continues_exactly(tmp_path, tiny_model, strategy):
    """Kill every process of a 2-process job mid-run; --resume continues from its last checkpoint
    (sharded for FSDP) and ends with the loss curve of an uninterrupted run, each step once."""
    import time

    def config(out: str) -> str:
        path = _config(tmp_path, tiny_model, out)
        _edit(path, max_steps=30, eval_steps=4, **({"fsdp": "full_shard auto_wrap"} if strategy == "fsdp" else {}))
        return path

    _train(config("whole"))
    path = config("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunepilot.cli.app", "train", path, "--json", "--nproc", "2"]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stream = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (stream.exists() and len(_steps(stream)) >= 10) and time.time() < deadline:
        time.sleep(0.05)
    _kill_tree(job.pid)  # the launcher and every rank (torchrun starts its workers in sessions of their own)
    job.wait()
    assert 10 <= len(_steps(stream)) < 30
    resumed = _train(path, "--nproc", "2", "--resume")
    assert resumed["steps"] == 30
    killed, whole = _steps(stream), _steps(tmp_path / "whole" / "metrics.jsonl")
    assert [s for s, _ in killed] == list(range(1, 31))
    assert [v for _, v in killed] == pytest.approx([v for _, v in whole], abs=1e-4)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a scheduler ending the job's cgroup does."""
    import signal
    import time
    from pathlib import Path

    def children(parent: int) -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                out.append(int(stat.parent.name))
        return out

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in tree):
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _steps(path) -> list[tuple[int, float]]:
    return [(r.step, r.loss) for r in read_stream(path) if isinstance(r, TrainStep)]


def test_lr_find_on_two_processes_ramps_like_one(tmp_path, tiny_model):
    """lr-find runs through the engine, so --nproc N ramps the same global batches as one process."""
    path = _config(tmp_path, tiny_model, "ramp")
    _edit(path, max_steps=30)
    args = ("--steps", "12", "--start", "1e-5", "--end", "1")
    one = _lrfind(path, "--run-dir", str(tmp_path / "r1"), *args)
    two = _lrfind(path, "--run-dir", str(tmp_path / "r2"), "--nproc", "2", *args)
    assert len(one["lrs"]) == len(two["lrs"]) > 0 and two["lrs"] == pytest.approx(one["lrs"])
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    assert two["suggestion"] == pytest.approx(one["suggestion"])


def _lrfind(config: str, *extra: str) -> dict:
    return _cli("lr-find", config, *extra)
