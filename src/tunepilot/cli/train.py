"""`tunepilot train CONFIG`: one run with a live health monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tunepilot.cli.output import Result, run_command
from tunepilot.cli.progress import TrainProgress
from tunepilot.config import load_config


def train_command(config_path: Path, overrides: list[str], resume: bool, show_progress: bool) -> Result:
    config, warnings = load_config(config_path, overrides)  # config mistakes first, before heavy imports
    from tunepilot.engines.run import TrainingRun, exit_code_for

    with TrainProgress(enabled=show_progress) as progress:
        run = TrainingRun(config, resume=resume, callbacks=[progress.on_record])
        plan = run.setup()
        progress.start(plan)
        for _ in run.steps():
            pass
        summary = run.finish()
    return Result("train", summary, exit_code=exit_code_for(summary), render=_render, warnings=warnings)


def _render(console: Console, s: dict[str, Any]) -> None:
    colour = {"completed": "green", "early_stopped": "green", "stopped": "red"}[s["status"]]
    console.print(f"[bold {colour}]{s['status']}[/] after {s['steps']}/{s['planned_steps']} steps "
                  f"in {s['seconds']:.1f} s ({s['tokens_per_second']:.0f} trained tokens/s)")
    if s["stop_reason"]:
        console.print(f"  reason: {s['stop_reason']['message']}")
    objective = s["objective"]
    if objective["best"] is not None:
        best = "restored" if s["restored_best"] else "kept"
        console.print(f"  best {objective['name']} {objective['best']:.4f} at step {objective['step']} ({best})")
    console.print(f"  adapter: {s['adapter']}\n  metrics: {s['run_dir']}/metrics.jsonl")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Path = typer.Argument(..., help="Run config YAML (tunepilot, HF or LLaMA-Factory keys)."),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set learning_rate=1e-4 (repeatable)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Train one run (LoRA, QLoRA or full) with a live health monitor; writes metrics, adapter, summary."""
        raise typer.Exit(run_command("train", json_, lambda: train_command(config, set_, resume, not json_)))
