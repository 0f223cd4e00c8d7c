"""`tunepilot lr-find CONFIG`: the learning-rate range test, with a suggested LR and how it was derived."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunepilot.cli.launch import launch, launched, rank, run_ranked
from tunepilot.cli.output import Result
from tunepilot.config import load_config
from tunepilot.io import atomic_write_json, ensure_dir


def lrfind_command(
    config_path: Path,
    overrides: list[str],
    start: float,
    end: float,
    steps: int,
    plot_path: Path | None,
    run_dir: Path | None,
) -> Result:
    from tunepilot.lrfind import LRFindSettings, find_lr, plot

    config, warnings = load_config(config_path, overrides)
    settings = LRFindSettings(start=start, end=end, steps=steps)
    settings.check()
    run_dir = run_dir or Path(config.output.output_dir + "-lrfind")
    ensure_dir(run_dir, "--run-dir")
    result = find_lr(config, settings, run_dir)
    data = {"settings": asdict(settings), **result.to_dict(), "run_dir": str(run_dir)}
    if rank() != 0:  # several processes ran the ramp (--nproc); rank 0's observer saw the one stream
        return Result("lr-find", data, render=_render, warnings=warnings)
    if plot_path is not None:
        plot(result, plot_path)
        data["plot"] = str(plot_path)
    atomic_write_json(run_dir / "lr_find.json", data)
    return Result("lr-find", data, render=_render, warnings=warnings)


def _render(console: Console, d: dict[str, Any]) -> None:
    n = len(d["lrs"])
    console.print(
        f"{n} steps, LR {d['lrs'][0]:.2g} -> {d['lrs'][-1]:.2g}"
        + (f"; stopped: {escape(d['stopped'])}" if d["stopped"] else "; no divergence within the range")
    )
    if d["suggestion"] is not None:
        console.print(f"[bold green]suggested learning_rate: {d['suggestion']:.3g}[/]")
    console.print(f"  {escape(d['explanation'])}")
    if "plot" in d:
        console.print(f"  plot: {d['plot']}")


def register(app: typer.Typer) -> None:
    @app.command("lr-find")
    def lr_find(
        config: Path = typer.Argument(..., help="Run config YAML (the same file `tunepilot train` takes)."),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set lora_rank=32 (repeatable)."),
        start: float = typer.Option(1e-7, "--start", help="First learning rate of the ramp."),
        end: float = typer.Option(1e-1, "--end", help="Last learning rate of the ramp."),
        steps: int = typer.Option(100, "--steps", help="Optimizer steps of the ramp (one LR each)."),
        plot_path: Path = typer.Option(None, "--plot", help="Write the loss-vs-LR curve as a PNG here."),
        run_dir: Path = typer.Option(
            None, "--run-dir", help="Where the ramp's metrics go (default <output_dir>-lrfind)."
        ),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
        nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes (GPUs); started with torchrun."),
    ) -> None:
        """Learning-rate range test: exponential ramp, smoothed loss, stop on divergence, suggested LR."""
        if nproc > 1 and not launched():
            argv = ["lr-find", str(config), *(a for kv in set_ for a in ("--set", kv))]
            argv += ["--start", str(start), "--end", str(end), "--steps", str(steps)]
            argv += ["--plot", str(plot_path)] * (plot_path is not None) + ["--run-dir", str(run_dir)] * bool(run_dir)
            raise typer.Exit(launch(nproc, argv + ["--json"] * json_))
        command = lambda progress: lrfind_command(config, set_, start, end, steps, plot_path, run_dir)  # noqa: E731
        raise typer.Exit(run_ranked("lr-find", json_, command))
