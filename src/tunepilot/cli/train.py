"""`tunepilot train CONFIG`: one run with a live health monitor."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tunepilot.cli.launch import launch, launched, rank, run_ranked
from tunepilot.cli.output import Result, print_warnings
from tunepilot.cli.progress import TrainProgress
from tunepilot.config import RunConfig, load_config, resume_conflicts
from tunepilot.errors import UserError
from tunepilot.io import RunDirLock


def train_command(config_path: Path, overrides: list[str], resume: bool, show_progress: bool) -> Result:
    config, warnings = load_config(config_path, overrides)  # config mistakes first, before heavy imports
    if show_progress:
        print_warnings(warnings)  # ignored keys are named now, before training, not after it
    from tunepilot.modelinfo import check_rank_fits

    m = config.method
    check_rank_fits(config.model.name_or_path, m.finetuning_type, m.lora_target, m.lora_rank, "method.lora_rank")
    run_dir = Path(config.output.output_dir)
    # one job per run directory: a second `train` here exits 2 (rank 0 holds it for all N processes)
    with RunDirLock(run_dir) if rank() == 0 else contextlib.nullcontext():
        if resume:
            check_resume(config, run_dir)
        return _train(config, resume, show_progress, warnings)


def check_resume(config: RunConfig, run_dir: Path) -> None:
    """Refuse a --resume whose config changes what the saved run trains (learning rate, steps, rank...)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved, _ = load_config(saved_path, check_paths=False)
    except UserError as e:
        raise UserError(
            f"{saved_path}: the saved config of this run cannot be read, so --resume cannot "
            f"check it ({e.message}); start a new output_dir"
        ) from e
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        raise UserError(
            f"{run_dir}: --resume would continue this run with {len(conflicts)} changed setting(s) that change "
            "training, so it could not continue exactly; revert them to the values in "
            f"{saved_path}, or train into a new output_dir",
            problems=[_change(k, saved, config) for k in conflicts],
        )


def _change(key: str, saved: RunConfig, new: RunConfig) -> str:
    def value(config: RunConfig):
        node = config.model_dump(mode="json")
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return f"{key}: {value(saved)!r} in the saved run, {value(new)!r} now"


def _train(config: RunConfig, resume: bool, show_progress: bool, warnings: list[str]) -> Result:
    from tunepilot.engines.observers import CallbackObserver
    from tunepilot.engines.run import TrainingRun, exit_code_for

    with TrainProgress(enabled=show_progress, logging_steps=config.train.logging_steps) as progress:
        run = TrainingRun(config, resume=resume, observers=[CallbackObserver(progress.on_record)])
        try:
            plan = run.setup()
            progress.start(plan)
            for _ in run.steps():
                pass
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (cli.output): summary.json says so, then exit 3
            _record_interrupt(run)
            raise
        summary = run.finish()
    return Result(
        "train",
        summary.to_json(),
        exit_code=exit_code_for(summary),
        render=_render,
        warnings=warnings,
        warned=show_progress,
    )


def _record_interrupt(run: Any) -> None:
    """summary.json of an interrupted run (status interrupted), through the run's recorder when setup
    got as far as opening it; the checkpoint it resumes from is the engine's, untouched here."""
    recorder = getattr(run, "recorder", None)
    if recorder is None or getattr(recorder, "writer", None) is None:
        return
    from tunepilot.engines.summary import FailureKind

    recorder.finish(
        status="interrupted",
        failure=FailureKind.INTERRUPTED,
        reason="interrupted (Ctrl-C or SIGTERM); re-run with --resume to continue",
    )


def _render(console: Console, s: dict[str, Any]) -> None:
    colour = {"completed": "green", "early_stopped": "green", "stopped": "red"}[s["status"]]
    console.print(
        f"[bold {colour}]{s['status']}[/] after {s['steps']}/{s['planned_steps']} steps "
        f"in {s['seconds']:.1f} s ({s['tokens_per_second']:.0f} trained tokens/s)"
    )
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
        nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes (GPUs); started with torchrun."),
    ) -> None:
        """Train one run (LoRA, QLoRA or full) with a live health monitor; writes metrics, adapter, summary."""
        if nproc > 1 and not launched():
            argv = ["train", str(config), *(a for kv in set_ for a in ("--set", kv))]
            raise typer.Exit(launch(nproc, argv + ["--resume"] * resume + ["--json"] * json_))
        raise typer.Exit(run_ranked("train", json_, lambda progress: train_command(config, set_, resume, progress)))
