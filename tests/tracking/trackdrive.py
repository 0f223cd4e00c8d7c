"""Drive tracker observers the way the run recorder does: on_start, every record, on_end."""

from __future__ import annotations

import json
from pathlib import Path

from tunepilot.config import build_config
from tunepilot.engines.observers import RunInfo
from tunepilot.engines.summary import Objective, RunSummary
from tunepilot.stream import EvalPoint, Event, MetricsWriter, TrainStep

STEPS = 10


class _Control:
    def __init__(self):
        self.emitted, self.stops = [], []

    def emit(self, event):
        self.emitted.append(event)

    def request_stop(self, event):
        self.stops.append(event)


def make_config(run_dir: Path, **tracking):
    raw = {"model_name_or_path": "tiny", "dataset": "train.jsonl", "output_dir": str(run_dir), "learning_rate": 3e-3}
    raw.update(tracking)
    config, _ = build_config(raw, check_paths=False)
    return config


def records(steps: int = STEPS):
    out = []
    for step in range(1, steps + 1):
        out.append(
            TrainStep(
                step=step,
                loss=3.0 - 0.1 * step,
                lr=1e-3,
                grad_norm=0.5,
                tokens=100 * step,
                seconds=0.1 * step,
                memory_mb=50.0,
            )
        )
        if step == 3:
            out.append(Event(step=3, code="loss_spike", severity="warning", message="loss 2.7 is 2.6x the median"))
        if step % 5 == 0:
            out.append(EvalPoint(step=step, eval_loss=2.5 - 0.1 * step, metrics={"accuracy": 0.1 * step}))
    return out


def summary_for(run_dir: Path, steps: int = STEPS, trial: int | None = None, status: str = "completed"):
    return RunSummary(
        engine="standard",
        status=status,
        ok=status == "completed",
        trial=trial,
        steps=steps,
        planned_steps=STEPS,
        tokens=100 * steps,
        seconds=1.5,
        train_seconds=1.0,
        tokens_per_second=1000.0,
        objective=Objective(name="eval_loss", direction="minimize", best=1.5, step=10),
        best_eval_loss=1.5,
        best_step=10,
        device="cpu",
        run_dir=str(run_dir),
        adapter=str(run_dir / "adapter"),
    )


def drive(observers, config, run_dir: Path, trial: int | None = None, params=None, steps: int = STEPS):
    """A whole run through `observers`, with its run dir written as the recorder writes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "adapter").mkdir(exist_ok=True)
    (run_dir / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 4}))
    info = RunInfo("standard", run_dir, config, STEPS, trial, dict(params or {}))
    control = _Control()
    for o in observers:
        o.on_start(info)
    with MetricsWriter(run_dir / "metrics.jsonl") as writer:
        for record in records(steps):
            writer.write(record)
            for o in observers:
                o.on_record(record, control)
    summary = summary_for(run_dir, steps, trial)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_json()))
    for o in observers:
        o.on_end(summary)
    return summary


def wandb_data(root: Path, *needles: bytes, timeout: float = 60.0) -> bytes:
    """The bytes of the one offline W&B run under `root`, once they hold every needle: wandb-core, a
    separate process, finishes writing the file after `run.finish()` returns."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        files = list(Path(root).glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, files
        data = files[0].read_bytes()
        if all(n in data for n in needles) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)
