"""`tunepilot evaluate CONFIG_OR_RUN`: task metrics by generation, for a run's adapter or the base model."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunepilot.cli.output import Result, run_command, stderr_console
from tunepilot.errors import UserError


@contextmanager
def _progress_bar(enabled: bool):
    """Yields `start(total) -> advance(n)`; the bar lives on stderr so --json stays clean."""
    if not enabled:
        yield lambda total: None
        return
    with Progress(
        TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr_console()
    ) as bar:

        def start(total: int):
            task = bar.add_task("evaluate", total=total)
            return lambda n: bar.advance(task, n)

        yield start


def evaluate_command(
    target: Path,
    data: Path | None,
    limit: int | None,
    metric: str | None,
    base: bool,
    few_shot: int | None,
    max_new_tokens: int | None,
    batch_size: int | None,
    out: Path | None,
    show_progress: bool,
    labels_file: Path | None = None,
    trust_config_code: bool = False,
) -> Result:
    from tunepilot.evaluate.command import apply_overrides, check_config_code, resolve_target, run_evaluation, summary

    t, warnings = resolve_target(target, base)
    if metric is None and not trust_config_code:
        check_config_code(t)  # a metric file named in a run's saved config.yaml is code: run it only if asked
    if labels_file is not None and not labels_file.is_file():
        raise UserError(f"--labels-file {labels_file}: not found; give a JSON list or a file with one label a line")
    t.settings = apply_overrides(
        t.settings, limit=limit, metric=metric, few_shot=few_shot, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    if labels_file is not None:  # the flag wins over the config's labels and labels_file
        t.settings = t.settings.model_copy(update={"labels": None, "labels_file": str(labels_file)})
    with _progress_bar(show_progress) as progress:
        scores, path, name = run_evaluation(t, data, out, progress)
    return Result("evaluate", summary(t, name, scores, path), render=_render, warnings=warnings)


def _render(console: Console, s: dict[str, Any]) -> None:
    shots = f" ({s['few_shot']}-shot)" if s["few_shot"] else ""
    what = f"adapter {s['adapter']}" if s["adapter"] else ("fine-tuned model" if s["tuned"] else "base model")
    what += shots
    console.print(
        f"[bold]{s['metric']}[/] = [bold]{s['value']:.4f}[/] on {s['n']} records of {s['data']} "
        f"({what}, {s['seconds']:.1f} s)"
    )
    for name, value in s["metrics"].items():
        if name != s["metric"]:
            # counts (unmatched, invalid_json) print as integers, rates with 4 decimals
            console.print(f"  {name}: {int(value)}" if float(value).is_integer() else f"  {name}: {value:.4f}")
    console.print(f"  {s['failures']} record(s) not fully right; per-record results: {s['results']}")


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        target: Path = typer.Argument(..., help="A run directory (config.yaml + adapter/) or a config YAML."),
        data: Path = typer.Option(None, "--data", help="Eval data file (default: data.eval of the config)."),
        limit: int = typer.Option(
            None,
            "--limit",
            min=1,
            help="Score N records: a seeded sample spread over the classes (labels still come from all records).",
        ),
        labels_file: Path = typer.Option(
            None,
            "--labels-file",
            help="Allowed answers for accuracy: a JSON list or one label a line (evaluate.labels_file).",
        ),
        metric: str = typer.Option(
            None, "--metric", help="exact_match, numeric_match, accuracy, token_f1, field_f1, or module:function."
        ),
        base: bool = typer.Option(False, "--base", help="Score the base model, without the run's adapter."),
        few_shot: int = typer.Option(
            None, "--few-shot", min=0, help="Show K train examples before each prompt (base-model baseline)."
        ),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Most tokens per answer."),
        batch_size: int = typer.Option(None, "--batch-size", min=1, help="Prompts generated together."),
        out: Path = typer.Option(None, "--out", help="Per-record results JSONL (default: RUN/eval/...)."),
        trust_config_code: bool = typer.Option(
            False, "--trust-config-code", help="Run a custom metric file named in RUN/config.yaml (that is code)."
        ),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Generate answers for an eval set and score them (greedy, batched); saves per-record results."""
        command = partial(evaluate_command, trust_config_code=trust_config_code)
        raise typer.Exit(
            run_command(
                "evaluate",
                json_,
                lambda: command(
                    target, data, limit, metric, base, few_shot, max_new_tokens, batch_size, out, not json_, labels_file
                ),
            )
        )
