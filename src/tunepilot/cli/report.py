"""`tunepilot report SWEEP_DIR`: an HTML report of a sweep (curves, leaderboard, importance, decisions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tunepilot.cli.output import Result, run_command


def report_command(sweep_dir: Path, storage: str | None, out: Path | None, cdn: bool) -> Result:
    from tunepilot.report import sweep_report

    data = sweep_report(sweep_dir, storage, out, offline=not cdn)
    return Result("report", data, render=_render)


def _render(console: Console, d: dict[str, Any]) -> None:
    console.print(f"report: {d['report']} ({d['trials']} trials)")
    if d["best"]:
        console.print(f"  best: trial {d['best']['number']} value {d['best']['value']:.6g}")


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        sweep_dir: Path = typer.Argument(..., help="A sweep directory written by `tunepilot sweep`."),
        storage: str = typer.Option(None, "--storage", help="Optuna RDB URL, when the sweep used one."),
        out: Path = typer.Option(None, "--out", help="HTML file to write (default: SWEEP_DIR/report.html)."),
        cdn: bool = typer.Option(
            False, "--cdn", help="Load plotly.js from its CDN (smaller file, needs network)."
        ),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Write an HTML report of a sweep: learning curves, leaderboard, parameter importance, decisions."""
        raise typer.Exit(run_command("report", json_, lambda: report_command(sweep_dir, storage, out, cdn)))
