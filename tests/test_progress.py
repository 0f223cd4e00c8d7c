"""Progress outside a terminal: a line every logging_steps with all and trained tokens/s; eval lines;
the sweep leaderboard printed in full (trial numbers kept) when not in a terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from tunepilot.cli.progress import TrainProgress
from tunepilot.cli.sweep import render
from tunepilot.stream import EvalPoint, TrainStep


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, force_terminal=False), buf


def test_plain_lines_every_logging_steps_and_at_the_end():
    console, buf = plain_console()
    plan = SimpleNamespace(total_steps=12, describe=lambda: "12 steps")
    with TrainProgress(logging_steps=5, console=console) as progress:
        progress.start(plan)
        for step in range(1, 13):
            progress.on_record(
                TrainStep(
                    step=step,
                    loss=2.0 / step,
                    lr=1e-4,
                    grad_norm=0.5,
                    tokens=100 * step,
                    input_tokens=400 * step,
                    seconds=2.0 * step,
                )
            )
            if step == 10:
                progress.on_record(EvalPoint(step=10, eval_loss=0.75, metrics={"accuracy": 0.5}))
    lines = buf.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["5/12", "10/12", "12/12"]
    assert "eval step 10: eval_loss 0.7500 accuracy 0.5" in lines
    # 2 s a step, 400 tokens a step of which 100 trained
    assert "200 tok/s (50 trained tok/s)" in steps[1] and "ETA 4s" in steps[1]


def test_trained_tokens_only_when_the_engine_does_not_report_all_tokens():
    console, buf = plain_console()
    with TrainProgress(logging_steps=1, console=console) as progress:
        progress.start(SimpleNamespace(total_steps=2, describe=lambda: "2 steps"))
        for step in (1, 2):
            progress.on_record(TrainStep(step=step, loss=1.0, tokens=50 * step, seconds=float(step)))
    assert "50 trained tok/s" in buf.getvalue() and " tok/s (" not in buf.getvalue()


def test_leaderboard_not_cut_to_80_columns_outside_a_terminal():
    console, buf = plain_console()
    params = {
        "learning_rate": 1e-4,
        "lora_rank": 16,
        "lora_alpha_multiplier": 2,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "lora_dropout": 0.05,
        "per_device_train_batch_size": 8,
        "num_train_epochs": 3,
    }
    rows = [
        {
            "number": 1234 + i,
            "state": "COMPLETE",
            "value": 0.5 + i / 10,
            "reached_pct": 100,
            "params": params,
            "steps": 1000,
            "seconds": 3600,
            "reason": "a long reason that goes on and on",
        }
        for i in range(3)
    ]
    data = {
        "sweep_dir": "s",
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "stopped": "done",
        "leaderboard": rows,
        "best": {"number": 1234, "value": 0.5},
    }
    render(console, data)
    table = [line for line in buf.getvalue().splitlines() if "COMPLETE" in line]
    assert [line.split()[0] for line in table] == ["1234", "1235", "1236"]
    assert max(len(line) for line in table) > 80 and all("0.05" in line for line in table)
