"""`tunepilot diagnose PATH`: a verdict on any run's log, the evidence, and the config change to make.

Exit codes: 0 healthy, 1 any other verdict, 2 unreadable input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from tunepilot.cli.output import Result, run_command
from tunepilot.errors import ExitCode, UserError

_STYLE = {
    "healthy": "green",
    "underfitting": "yellow",
    "stalled": "yellow",
    "overfitting": "yellow",
    "too-short": "yellow",
    "unstable": "red",
    "diverged": "red",
    "no-training-data": "red",
}
_SEVERITY = {"error": "red", "warning": "yellow", "info": "cyan"}


def parse_params(text: str | None) -> int | None:
    """7e9 from "7B", "7b", "7000000000"; 1.35e8 from "135M"."""
    if text is None:
        return None
    cleaned = text.strip().upper()
    scale = {"B": 1e9, "M": 1e6, "K": 1e3}.get(cleaned[-1:], 1)
    try:
        return int(float(cleaned[:-1] if scale != 1 else cleaned) * scale)
    except ValueError:
        raise UserError(f"--num-params {text!r}: expected a number like 7B, 135M or 7000000000") from None


def diagnose_command(
    path: Path, plot: Path | None, method: str | None, num_params: str | None, fmt: str | None
) -> Result:
    from tunepilot.health.diagnose import diagnose
    from tunepilot.logs import read_log

    if method not in (None, "lora", "full"):
        raise UserError(f"--method {method!r}: expected lora or full")
    log = read_log(path, fmt)
    if method is not None:
        log.method = method
    if num_params is not None:
        log.num_params = parse_params(num_params)
    diagnosis = diagnose(log)
    data = diagnosis.to_dict()
    if plot is not None:
        from tunepilot.health.plot import plot_run

        data["plot"] = str(plot_run(log, diagnosis, plot))
    code = ExitCode.OK if diagnosis.healthy else ExitCode.FINDINGS
    return Result("diagnose", data, exit_code=code, render=_render, warnings=list(log.notes))


def _render(console: Console, d: dict[str, Any]) -> None:
    run = d["run"]
    console.print(
        f"[bold {_STYLE[d['verdict']]}]{d['verdict']}[/]  {escape(run['path'])} ({run['source']}, "
        f"{run['train_points']} train / {run['eval_points']} eval points)"
    )
    planned = f" of {run['planned_steps']} planned steps" if run.get("planned_steps") else ""
    stage = "a mid-run checkpoint: judged as the run stands, not as it ended" if d.get("mid_run") else "the run's end"
    console.print(f"  confidence {d.get('confidence', 'medium')}; {stage}{planned if d.get('mid_run') else ''}")
    for f in d["findings"]:
        colour = _SEVERITY[f["severity"]]
        console.print(f"  [{colour}]{f['severity']:7}[/] {f['code']}: {escape(f['message'])}")
        for check in f["evidence"].get("checks", []):
            console.print(f"            - check {escape(check)}")
    if d["recommendations"]:
        console.print("\nrecommended changes:")
        for r in d["recommendations"]:
            after = r["after"] if r["after"] is not None else f"{r['change']} of your value"
            console.print(
                f"  {r['key']}: {r['before'] if r['before'] is not None else '?'} -> {after}"
                f"  [dim]({escape(r['reason'])})[/]"
            )
    if d["patch"]:
        console.print("\nconfig patch (YAML):")
        console.print(escape(yaml.safe_dump(d["patch"], sort_keys=False).rstrip()), highlight=False)
        console.print(f"or: tunepilot train CONFIG {d['set_args']}", highlight=False)
    if d.get("plot"):
        console.print(f"\nplot: {escape(d['plot'])}")


def register(app: typer.Typer) -> None:
    @app.command("diagnose")
    def diagnose(
        path: Path = typer.Argument(
            ..., help="metrics.jsonl, trainer_state.json, trainer_log.jsonl, or a run or checkpoint directory."
        ),
        plot: Path = typer.Option(None, "--plot", help="Write a PNG of the curves with the findings marked."),
        method: str = typer.Option(None, "--method", help="lora or full, when the log does not say."),
        num_params: str = typer.Option(None, "--num-params", help="Base model size (7B, 135M), for the LR check."),
        fmt: str = typer.Option(None, "--format", help="Force a reader: tunepilot, hf_trainer_state, llamafactory."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Judge a finished (or running) run from its log: verdict, evidence, config patch, plot."""
        raise typer.Exit(run_command("diagnose", json_, lambda: diagnose_command(path, plot, method, num_params, fmt)))
