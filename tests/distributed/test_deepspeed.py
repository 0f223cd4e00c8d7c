"""DeepSpeed ZeRO through `tunepilot train`: the same run as without DeepSpeed.

DeepSpeed runs on CPU too (its CPU accelerator, gloo), so these run in CI; on the GPU machine the
same file runs on CUDA (NCCL), where two processes need two GPUs. fp32, so the curves must match a
plain run closely.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_ddp import _config, _edit, _steps, _train
from tunepilot.engines.summary import read_summary
from tunepilot.stream import EvalPoint, TrainStep, read_stream

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed package")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ONE_DEVICE_PER_PROCESS = DEVICE == "cuda" and torch.cuda.device_count() < 2

ZERO = {  # LLaMA-Factory's ds_z{2,3}_config.json: every size "auto"
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "fp16": {"enabled": "auto", "loss_scale": 0},
    "bf16": {"enabled": "auto"},
}


def _zero_config(tmp_path, tiny_model, out: str, stage: int | None, **keys) -> str:
    path = _config(tmp_path, tiny_model, out)
    _edit(path, **{"device": DEVICE, "torch_dtype": "float32", **keys})
    if stage is not None:
        zero = {"stage": stage, "reduce_bucket_size": "auto", "contiguous_gradients": True}
        if stage == 3:
            zero |= {"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"}
        ds = tmp_path / f"ds_z{stage}_{out}.json"
        ds.write_text(json.dumps({**ZERO, "zero_optimization": zero}))
        _edit(path, deepspeed=str(ds))
    return path


def _curves(path):
    records = read_stream(path)
    train = [(r.step, r.loss, r.grad_norm) for r in records if isinstance(r, TrainStep)]
    return train, [r.eval_loss for r in records if isinstance(r, EvalPoint)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """One folder for the plain run, trained once, and each stage's run beside it."""
    folder = tmp_path_factory.mktemp("zero")
    assert _train(_zero_config(folder, tiny_model, "plain", None))["ok"]
    return folder


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_trains_the_same_run_as_plain_pytorch(runs, tiny_model, stage):
    """Loss, grad norm (DeepSpeed's global norm), eval loss and the saved PEFT adapter of ZeRO-0/1/2/3
    on one process equal the plain run's; the checkpoint is DeepSpeed's, without the frozen base."""
    plain = read_summary(runs / "plain" / "summary.json")
    zero = _train(_zero_config(runs, tiny_model, f"z{stage}", stage))
    assert zero["ok"] and zero["steps"] == plain.steps == 6 and zero["tokens"] == plain.tokens
    (t0, e0), (t1, e1) = (_curves(runs / d / "metrics.jsonl") for d in ("plain", f"z{stage}"))
    assert [s for s, *_ in t1] == [1, 2, 3, 4, 5, 6]
    diffs = [max(abs(a[1] - b[1]), abs(a[2] - b[2]) / max(a[2], 1e-6)) for a, b in zip(t0, t1, strict=True)]
    print(f"ZeRO-{stage} vs plain, fp32: max |loss diff| or relative grad-norm diff over 6 steps {max(diffs):.2e}")
    assert max(diffs) < 1e-4
    assert e1 == pytest.approx(e0, abs=1e-4) and len(e0) == 2
    weights = [load_file(str(runs / d / "adapter" / "adapter_model.safetensors")) for d in ("plain", f"z{stage}")]
    assert weights[0].keys() == weights[1].keys()
    gap = max(float((weights[0][k] - weights[1][k].to(weights[0][k].dtype)).abs().max()) for k in weights[0])
    print(f"ZeRO-{stage} adapter vs plain adapter: max abs diff {gap:.2e}")
    assert gap < 1e-4
    saved = sum(f.stat().st_size for f in (runs / f"z{stage}" / "checkpoint" / "zero").rglob("*") if f.is_file())
    assert (runs / f"z{stage}" / "checkpoint" / "zero.json").exists() and saved > 0


def test_a_damaged_or_foreign_zero_checkpoint_is_refused_by_name(runs, tiny_model):
    """--resume of a ZeRO-2 run's checkpoint with bad bytes in its zero.json, or after its DeepSpeed
    JSON was edited to another stage in place: exit 2 naming the checkpoint, no traceback."""
    import shutil

    import yaml

    def resume(out: str) -> subprocess.CompletedProcess:
        shutil.copytree(runs / "z2", runs / out)
        raw = yaml.safe_load((runs / "z2.yaml").read_text())
        (runs / f"{out}.yaml").write_text(yaml.safe_dump({**raw, "output_dir": str(runs / out)}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("WORLD_SIZE", None)
        cmd = [sys.executable, "-m", "tunepilot.cli.app", "train", str(runs / f"{out}.yaml"), "--resume", "--json"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    def refused(done: subprocess.CompletedProcess, *words: str) -> None:
        assert done.returncode == 2, done.stdout[-1500:] + done.stderr[-1500:]
        assert all(w in done.stdout for w in words) and "Traceback" not in done.stdout + done.stderr, done.stdout

    if not (runs / "z2").is_dir():  # run alone, without the stage tests before it
        _train(_zero_config(runs, tiny_model, "z2", 2))
    (runs / "z2" / "checkpoint" / "zero.json").write_bytes(b"\xff\xfe{stage")  # the copy below gets it
    try:
        refused(resume("damaged"), "checkpoint is damaged", "damaged/checkpoint")
    finally:
        (runs / "z2" / "checkpoint" / "zero.json").write_text(json.dumps({"stage": 2, "world": 1}))
    ds = Path(yaml.safe_load((runs / "z2.yaml").read_text())["deepspeed"])
    before = ds.read_text()
    ds.write_text(before.replace('"stage": 2', '"stage": 3'))
    try:
        refused(resume("restaged"), "a ZeRO-2 checkpoint of 1 process(es)", "now ZeRO-3")
    finally:
        ds.write_text(before)


def test_zero3_resumes_exactly_after_sigkill(tmp_path, tiny_model):
    """SIGKILL mid-run, then --resume: DeepSpeed's checkpoint (partitions, optimizer state) plus the
    run's schedule and loop state give the curve of an uninterrupted run, every step once. ZeRO-3,
    whose partitions are the harder case (ZeRO-2's checkpoint is saved and loaded by the same code)."""
    stage = 3
    long = {"max_steps": 24, "eval_steps": 4}
    _train(_zero_config(tmp_path, tiny_model, "whole", stage, **long))
    path = _zero_config(tmp_path, tiny_model, "killed", stage, **long)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "tunepilot.cli.app", "train", path, "--json"]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stream = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (stream.exists() and len(_steps(stream)) >= 10) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert 10 <= len(_steps(stream)) < 24
    resumed = _train(path, "--resume")
    assert resumed["steps"] == 24
    killed, whole = _steps(stream), _steps(tmp_path / "whole" / "metrics.jsonl")
    assert [s for s, _ in killed] == list(range(1, 25))
    assert [v for _, v in killed] == pytest.approx([v for _, v in whole], abs=1e-4)


def test_zero3_bf16_trains_and_its_adapter_loads_in_peft(tmp_path, tiny_model):
    """bf16 under ZeRO-3 (DeepSpeed's mixed precision: bf16 weights, fp32 master partitions): the loss
    falls, and the adapter gathered from the partitions loads with PeftModel.from_pretrained."""
    path = _zero_config(tmp_path, tiny_model, "bf16", 3, torch_dtype="bfloat16", max_steps=12, eval_steps=6)
    done = _train(path)
    assert done["ok"] and done["steps"] == 12
    train, evals = _curves(tmp_path / "bf16" / "metrics.jsonl")
    assert train[-1][1] < train[0][1] and all(g > 0 for _, _, g in train)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), str(tmp_path / "bf16" / "adapter")
    )
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(float(p.abs().max()) > 0 for p in lora)  # trained: B starts at zero


@pytest.mark.skipif(ONE_DEVICE_PER_PROCESS, reason="two processes of ZeRO need two GPUs")
def test_zero3_on_two_processes_trains_the_same_run_as_one(tmp_path, tiny_model):
    one = _train(_zero_config(tmp_path, tiny_model, "one", None))
    two = _train(_zero_config(tmp_path, tiny_model, "two", 3), "--nproc", "2")
    assert two["ok"] and two["tokens"] == one["tokens"]
    (t0, _), (t1, _) = (_curves(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [b[1] for b in t1] == pytest.approx([a[1] for a in t0], abs=1e-4)


def test_two_zero_runs_in_one_process(tmp_path, tiny_model):
    """A sweep trains its trials one after another in one process: the second DeepSpeed run joins the
    one-process group the first made (DeepSpeed keeps it; a destroyed one is not made again)."""
    script = f"""
import yaml
from tunepilot.config import build_config
from tunepilot.engines.run import train
for out in ("first", "second"):
    raw = yaml.safe_load(open({_zero_config(tmp_path, tiny_model, "base", 2)!r}))
    raw["output_dir"] = {str(tmp_path)!r} + "/" + out
    summary = train(build_config(raw, check_paths=False)[0])
    print(out, summary.ok, summary.steps)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first True 6" in done.stdout and "second True 6" in done.stdout
