import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunepilot.engines.run import TrainingRun, train
from tunepilot.stream import EvalPoint, Event, TrainStep, read_stream


def steps_of(run_dir):
    return [r.step for r in read_stream(run_dir / "metrics.jsonl") if isinstance(r, TrainStep)]


def test_train_writes_stream_adapter_and_summary(tiny_config):
    config = tiny_config()
    summary = train(config).to_json()
    run_dir = config.output.output_dir
    records = read_stream(f"{run_dir}/metrics.jsonl")
    train_steps = [r for r in records if isinstance(r, TrainStep)]
    assert [r.step for r in train_steps] == list(range(1, 13))
    assert all(r.loss > 0 and r.grad_norm is not None and r.tokens > 0 for r in train_steps)
    assert [r.tokens for r in train_steps] == sorted(r.tokens for r in train_steps)
    assert [r.step for r in records if isinstance(r, EvalPoint)] == [0, 4, 8, 12]  # 0: the untrained baseline
    assert train_steps[0].lr < train_steps[1].lr  # warmup
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert 0 < summary["train_seconds"] < summary["seconds"]  # evaluations are not training time
    saved = yaml.safe_load(Path(run_dir, "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == config.train.learning_rate
    assert json.loads(Path(run_dir, "summary.json").read_text())["steps"] == 12


def test_saved_adapter_reloads_with_peft_and_gives_the_same_logits(tiny_config, tiny_model):
    config = tiny_config(load_best_model_at_end=False, lora_dropout=0.0)
    run = TrainingRun(config)
    run.setup()
    for _ in run.steps():
        pass
    run.finish()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    run.model.eval()
    with torch.no_grad():
        expected = run.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        reloaded = PeftModel.from_pretrained(base, f"{config.output.output_dir}/adapter").eval()
        got = reloaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter changed the model


def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path):
    full = train(tiny_config(output_dir=str(tmp_path / "a"))).to_json()
    interrupted = TrainingRun(tiny_config(output_dir=str(tmp_path / "b")))
    interrupted.setup()
    for point in interrupted.steps():
        if point.step == 8:
            break  # as if killed right after the checkpoint of step 8
    interrupted.close()
    resumed = train(tiny_config(output_dir=str(tmp_path / "b")), resume=True).to_json()
    a = read_stream(tmp_path / "a" / "metrics.jsonl")
    b = read_stream(tmp_path / "b" / "metrics.jsonl")
    loss = lambda rs: [r.loss for r in rs if isinstance(r, TrainStep)]  # noqa: E731
    assert len(loss(a)) == len(loss(b)) == 12
    assert loss(a) == pytest.approx(loss(b), abs=1e-6)
    assert any(isinstance(r, Event) and r.code == "resumed" for r in b)
    assert resumed["best_eval_loss"] == pytest.approx(full["best_eval_loss"], abs=1e-6)


def test_refuses_to_overwrite_a_previous_run_without_resume(tiny_config):
    from tunepilot.errors import UserError

    config = tiny_config(max_steps=2)
    train(config)
    with pytest.raises(UserError, match="--resume"):
        train(config)


def test_early_stopping_restores_the_best_adapter(tiny_config):
    # a threshold no gain can reach: only the first eval counts as best, the run stops after 2 more
    config = tiny_config(max_steps=40, eval_steps=2, early_stopping_patience=2, early_stopping_threshold=100.0)
    summary = train(config).to_json()
    assert summary["status"] == "early_stopped"
    assert summary["steps"] == 6 and summary["best_step"] == 2 and summary["restored_best"]


def test_sigkill_then_resume_has_every_step_exactly_once(tiny_config, tmp_path):
    from tunepilot.config import dump_config

    config = tiny_config(max_steps=150, eval_steps=10, early_stopping_patience=None)
    run_dir = Path(config.output.output_dir)
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(config))
    cmd = [sys.executable, "-m", "tunepilot.cli.app", "train", str(path), "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_steps(run_dir, 25, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 25 <= len(steps_of(run_dir)) < 150
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert steps_of(run_dir) == list(range(1, 151))
    assert json.loads(done.stdout)["steps"] == 150


def wait_for_steps(run_dir: Path, n: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(steps_of(run_dir)) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {n} in {timeout} s")


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_schedulers_follow_their_shape_after_warmup(tiny_config, tmp_path, scheduler):
    config = tiny_config(
        lr_scheduler_type=scheduler, warmup_steps=2, max_steps=8, eval_steps=8, output_dir=str(tmp_path / scheduler)
    )
    train(config)
    lrs = [r.lr for r in read_stream(tmp_path / scheduler / "metrics.jsonl") if isinstance(r, TrainStep)]
    peak = config.train.learning_rate
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(peak / 2) and lrs[2] == pytest.approx(peak)
    if scheduler == "constant":
        assert lrs[2:] == pytest.approx([peak] * 6)
    else:
        assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))


def test_full_fine_tuning_trains_every_weight_and_saves_a_model(tiny_config, tiny_model, tmp_path):
    config = tiny_config(finetuning_type="full", max_steps=3, eval_steps=3, learning_rate=1e-3)
    summary = train(config).to_json()
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    saved = AutoModelForCausalLM.from_pretrained(summary["adapter"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = zip(saved.named_parameters(), base.named_parameters(), strict=True)
    changed = [n for (n, p), (_, q) in pairs if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters()))


def test_rslora_scales_by_sqrt_rank(tiny_config):
    run = TrainingRun(tiny_config(use_rslora=True, lora_rank=4, lora_alpha=8, max_steps=1))
    run.setup()
    layer = next(m for m in run.model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)
