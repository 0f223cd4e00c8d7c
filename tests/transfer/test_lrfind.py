from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config
from tunepilot.errors import UserError
from tunepilot.lrfind import LRFindResult, LRFindSettings, Ramp, find_lr, suggest


def feed(settings, losses):
    ramp = Ramp(settings)
    for k, loss in enumerate(losses):
        ramp.observe(loss, settings.lr_at(k))
        if ramp.stop_reason:
            break
    return ramp


def test_ema_is_bias_corrected_and_divergence_stops():
    s = LRFindSettings(steps=10, beta=0.9)
    ramp = feed(s, [2.0, 2.0, 2.0, 1.0, 1.0, 9.0, 50.0, 50.0, 50.0, 50.0])
    assert ramp.result.smoothed[0] == pytest.approx(2.0)  # no pull towards 0 at the start
    assert ramp.result.smoothed[2] == pytest.approx(2.0)
    assert ramp.stop_reason and "4 x best" in ramp.stop_reason
    assert len(ramp.result.losses) < 10


def test_nan_loss_stops_the_ramp():
    ramp = feed(LRFindSettings(steps=10), [2.0, 1.9, float("nan"), 1.0])
    assert ramp.stop_reason.startswith("loss is nan") and len(ramp.result.losses) == 3


def curve(settings, steep_at, min_at):
    """Loss falling fastest at lr=steep_at (a logistic in log lr), flat until min_at, then rising."""
    out = LRFindResult()
    for k in range(settings.steps):
        lr = settings.lr_at(k)
        x = math.log(lr)
        loss = 2.0 - 1.0 / (1 + math.exp(-(x - math.log(steep_at)) * 2)) + max(0.0, x - math.log(min_at)) ** 2
        out.lrs.append(lr)
        out.losses.append(loss)
        out.smoothed.append(loss)
    return out


def test_suggestion_is_the_steepest_point_below_the_cap():
    s = LRFindSettings(start=1e-7, end=1.0, steps=71)
    r = curve(s, steep_at=1e-4, min_at=1e-2)
    suggest(r, s)
    assert r.suggestion == pytest.approx(1e-4, rel=0.3)
    assert r.min_loss_lr == pytest.approx(1e-2, rel=0.5)
    assert "steepest descent" in r.explanation


def test_suggestion_is_capped_below_the_minimum():
    s = LRFindSettings(start=1e-7, end=1.0, steps=71)
    r = curve(s, steep_at=5e-3, min_at=1e-2)  # steepest point too close to the cliff
    suggest(r, s)
    assert r.suggestion == pytest.approx(0.1 * r.min_loss_lr)
    assert r.suggestion < r.steepest_lr


def test_bad_ranges_are_user_errors():
    with pytest.raises(UserError):
        LRFindSettings(start=1e-1, end=1e-3).check()
    with pytest.raises(UserError):
        LRFindSettings(steps=3).check()


def write_chat(path, n):
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i % 7} + {i % 5}?"},
                    {"role": "assistant", "content": f"{i % 7 + i % 5}"},
                ]
            }
        )
        for i in range(n)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_ramp_runs_on_the_standard_engine(tiny_model, tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        f"model_name_or_path: {tiny_model}\ntrain: {write_chat(tmp_path / 'd.jsonl', 32)}\n"
        f"cutoff_len: 32\nlora_rank: 4\nper_device_train_batch_size: 4\ndevice: cpu\n"
        f"output_dir: {tmp_path / 'run'}\nlr_scheduler_type: cosine\nwarmup_ratio: 0.5\n"
    )
    plot = tmp_path / "lr.png"
    result = CliRunner().invoke(
        app,
        ["lr-find", str(config_path), "--start", "1e-5", "--end", "10", "--steps", "12", "--plot", str(plot), "--json"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    lrs = body["lrs"]
    # the engine's scheduler was replaced by the exponential ramp (the config's cosine+warmup is gone)
    assert lrs[0] == pytest.approx(1e-5)
    assert all(b / a == pytest.approx((10 / 1e-5) ** (1 / 11), rel=1e-6) for a, b in zip(lrs, lrs[1:], strict=False))
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run-lrfind" / "lr_find.json").exists()


@pytest.mark.slow
def test_suggested_lr_lowers_eval_loss_on_smollm2(smollm2_dir, shared_data, tmp_path):
    """lr-find on SmolLM2-135M + GSM8K; then a short run at the suggestion lowers eval loss, and one at
    the LR where the ramp diverged does not: the suggestion sits inside the range that trains."""
    from tunepilot.config import config_with
    from tunepilot.engines.run import TrainingRun

    config, _ = build_config(
        {
            "model_name_or_path": str(smollm2_dir),
            "train": str(shared_data / "gsm8k" / "train.jsonl"),
            "eval": str(shared_data / "gsm8k" / "test.jsonl"),
            "max_samples": 48,
            "max_eval_samples": 8,
            "cutoff_len": 96,
            "lora_rank": 8,
            "per_device_train_batch_size": 4,
            "device": "cpu",
            "output_dir": str(tmp_path / "run"),
            "health.enabled": False,
        }
    )
    s = LRFindSettings(start=1e-6, end=3.0, steps=16)
    found = find_lr(config, s, tmp_path / "ramp")
    assert found.suggestion is not None, found.explanation
    assert found.suggestion < found.lrs[-1] / 100  # far below where the ramp ended (diverged or at LR 3)

    def eval_change(lr: float) -> float:
        cfg = config_with(
            config,
            {
                "learning_rate": lr,
                "max_steps": 6,
                "eval_steps": 6,
                "warmup_steps": 1,
                "lr_scheduler_type": "constant_with_warmup",
                "output_dir": str(tmp_path / f"{lr}"),
                "overwrite_output_dir": True,
            },
        )
        run = TrainingRun(cfg)
        run.setup()
        before = run.evaluate(0).eval_loss
        after = [p.eval_loss for p in run.steps()][-1]
        run.finish()
        return after - before

    assert eval_change(found.suggestion) < 0
    assert eval_change(found.lrs[-1]) > 0  # the LR at which the ramp stopped (or its end)
