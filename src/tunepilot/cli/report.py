"""`tunepilot report SWEEP_DIR`: an HTML report of a sweep (curves, leaderboard, importance, decisions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tunepilot.cli.output import Result, quiet_optuna, run_command


def report_command(sweep_dir: Path, storage: str | None, out: Path | None, cdn: bool) -> Result:
    from tunepilot.report import sweep_report
    from tunepilot.report.sweep import load_sweep_study
    from tunepilot.search.results import write_results
    from tunepilot.search.study import check_storage, normalize_url, storage_errors

    quiet_optuna()

    url = normalize_url(storage) if storage else _stored_url(sweep_dir)
    if storage:
        check_storage(url)  # one message for a bad URL, a missing driver or an unreachable server
    with storage_errors(url or ""):
        data = sweep_report(sweep_dir, url, out, offline=not cdn)
        # the leaderboard and best.yaml from the storage too: workers on other machines may have
        # finished trials after this directory's worker wrote its own
        study, meta = load_sweep_study(sweep_dir, url)
        data.update(write_results(sweep_dir, study, _base(meta)))
    return Result("report", data, render=_render)


def _stored_url(sweep_dir: Path) -> str | None:
    """The storage named in sweep.json (the sweep-directory default), when readable."""
    import json

    try:
        return json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8")).get("storage")
    except (OSError, ValueError, AttributeError):
        return None  # sweep_report says what is wrong with the directory


def _base(meta: dict[str, Any]) -> Any:
    """The sweep's resolved base config as its sweep.json keeps it (None: no base, or an older sweep.json)."""
    if not meta.get("base"):
        return None
    from tunepilot.config import RunConfig

    try:
        return RunConfig.model_validate(meta["base"])
    except ValueError:
        return None


def _render(console: Console, d: dict[str, Any]) -> None:
    console.print(f"report: {d['report']} ({d['trials']} trials)")
    if d.get("best_yaml"):
        console.print(f"  best config: {d['best_yaml']}")
    if d["best"]:
        console.print(f"  best: trial {d['best']['number']} value {d['best']['value']:.6g}")


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        sweep_dir: Path = typer.Argument(..., help="A sweep directory written by `tunepilot sweep`."),
        storage: str = typer.Option(None, "--storage", help="Optuna RDB URL, when the sweep used one."),
        out: Path = typer.Option(None, "--out", help="HTML file to write (default: SWEEP_DIR/report.html)."),
        cdn: bool = typer.Option(False, "--cdn", help="Load plotly.js from its CDN (smaller file, needs network)."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Write an HTML report of a sweep: learning curves, leaderboard, parameter importance, decisions."""
        raise typer.Exit(run_command("report", json_, lambda: report_command(sweep_dir, storage, out, cdn)))
