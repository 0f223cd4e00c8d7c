"""`tunepilot validate DATA`: parse, render, tokenize and check every record; say what is wrong and where.

Exit 0 without error findings, 1 with, 2 for usage errors (missing, unreadable, empty or binary
file, unknown format, a directory of mixed file types, a bad option).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunepilot.cli.output import Result, run_command
from tunepilot.errors import ExitCode, UserError

FIRST_LINES = 5  # offending lines shown per code in the text summary


def _data_settings(data: Path, config: Path | None, overrides: dict[str, Any]):
    from pydantic import ValidationError

    from tunepilot.config import DataSettings, format_validation, load_config

    base: dict[str, Any] = {}
    model = None
    if config is not None:
        cfg, _ = load_config(config, check_paths=False)
        base, model = cfg.data.model_dump(), cfg.model
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["train"] = str(data)
    if data.is_dir():
        base.update(_llamafactory_folder(data))
    try:
        return DataSettings.model_validate(base), model
    except ValidationError as e:
        raise UserError("validate: invalid option", ExitCode.USAGE, format_validation(e)) from e


def _llamafactory_folder(data: Path) -> dict[str, Any]:
    """A LLaMA-Factory dataset folder: validate every local dataset its dataset_info.json names, each
    read with its own formatting, columns and tags (hub-only and preference entries are skipped)."""
    from tunepilot.data.sources import is_llamafactory_dir, read_info

    if not is_llamafactory_dir(data):
        return {}
    info = read_info(data)
    names = [n for n, e in info.items() if e.get("file_name") and not e.get("ranking")]
    if not names:
        raise UserError(
            f"{data / 'dataset_info.json'}: names no local SFT dataset (each has a hub URL or "
            "ranking: true); nothing to validate"
        )
    return {"train": ",".join(names), "dataset_dir": str(data.resolve())}


def _tokenizer(model: str | None, config_model):
    from tunepilot.config import ModelSettings
    from tunepilot.models import load_tokenizer

    if model is not None:
        p = Path(model)
        settings = (
            ModelSettings(name_or_path=str(p.parent), gguf_file=p.name)
            if model.endswith(".gguf")
            else ModelSettings(name_or_path=model)
        )
        try:
            return load_tokenizer(settings), model
        except ValueError as e:  # a directory without tokenizer files: transformers raises ValueError
            raise UserError(
                f"--model {model}: no tokenizer could be loaded from it ({str(e).splitlines()[0]}); "
                "pass a model directory with tokenizer files, a .gguf file or a hub id"
            ) from e
    if config_model is not None:
        return load_tokenizer(config_model), config_model.name_or_path
    return None, None


def _columns(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, col = item.partition("=")
        if not sep or not key.strip() or not col.strip():
            raise UserError(f"--column {item!r}: expected field=column, e.g. --column prompt=text")
        out[key.strip()] = col.strip()
    return out


def validate_command(
    data: Path,
    config: Path | None = None,
    model: str | None = None,
    eval_path: Path | None = None,
    fmt: str | None = None,
    columns: list[str] | None = None,
    template: str | None = None,
    cutoff_len: int | None = None,
) -> Result:
    from tunepilot.data.validate import validate_data

    overrides = {
        "eval": str(eval_path) if eval_path else None,
        "format": fmt,
        "template": template,
        "cutoff_len": cutoff_len,
        "columns": _columns(columns) if columns else None,
    }
    settings, config_model = _data_settings(data, config, overrides)
    tokenizer, model_name = _tokenizer(model, config_model)
    report = validate_data(settings, tokenizer)
    body = {
        "files": {"train": settings.train, "eval": settings.eval},
        "format": report.format,
        "template": report.template,
        "tokenizer": model_name,
        "cutoff_len": settings.cutoff_len,
        "errors": report.errors,
        "warnings": sum(f.severity == "warning" for f in report.findings),
        "counts": report.counts(),
        "findings": [f.as_dict() for f in report.findings],
        "stats": report.stats,
    }
    warnings = (
        []
        if tokenizer is not None
        else [
            "no model given: template, masking and token checks were skipped and truncation is estimated "
            "from characters; "
            "pass --model or --config"
        ]
    )
    code = ExitCode.FINDINGS if report.errors else ExitCode.OK
    return Result("validate", body, exit_code=code, render=render, warnings=warnings)


def render(console: Console, d: dict[str, Any]) -> None:
    files = d["files"]["train"] + (f" + eval {d['files']['eval']}" if d["files"]["eval"] else "")
    how = f"template {d['template']}, {d['tokenizer']}" if d["tokenizer"] else "no tokenizer"
    console.print(f"[bold]validate[/] {escape(files)} ({d['format']}, {escape(how)})")
    for split in ("train", "eval"):
        if d["stats"].get(split):
            _render_stats(console, split, d["stats"][split])
    by_code: dict[str, list[dict]] = {}
    for f in d["findings"]:
        by_code.setdefault(f["code"], []).append(f)
    for code, info in d["counts"].items():
        color = {"error": "red", "warning": "yellow"}.get(info["severity"], "cyan")
        console.print(f"  [{color}]{info['severity']:<7}[/] {code:<28} {info['count']:>6}")
        for f in by_code[code][:FIRST_LINES]:
            where = f"{f['source']}:{f['line']}" if f["line"] is not None else f["source"]
            console.print(f"           {escape(where)}: {escape(f['message'])}")
    verdict = f"[red]{d['errors']} error(s)[/]: fix them before training" if d["errors"] else "[green]no errors[/]"
    console.print(f"{verdict}; {d['warnings']} warning(s)")


def _render_stats(console: Console, split: str, s: dict[str, Any]) -> None:
    unit = s.get("unit", "tokens")
    line = f"  {split}: {s['records']} records"
    if unit == "tokens":
        line += (
            f", {s['tokens']} tokens, {s['trainable_tokens']} trainable "
            f"({s['trainable_share']:.1%}), {s['truncated']} truncated, {s['dropped']} dropped"
        )
    console.print(line)
    for ds in s.get("datasets") or []:
        how = (
            f"{ds['share']:.0%} of each epoch ({ds['passes_per_epoch']} passes over it)"
            if s["mix"] == "stacked"
            else f"phase {ds['phase']}" + (f", {ds['steps']} steps" if ds["steps"] else "")
        )
        console.print(f"    {s['mix']} {escape(ds['name'])}: {ds['records']} records, {how}")
    for key in ("length", "prompt_length", "answer_length"):
        p = s.get(key)
        if p:
            console.print(
                f"    {key.replace('_', ' ')} ({unit}): min {p['min']} p50 {p['p50']:.0f} "
                f"p90 {p['p90']:.0f} p99 {p['p99']:.0f} max {p['max']}"
            )


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        data: Path = typer.Argument(..., help="Data file (jsonl/json/csv/tsv/parquet) or directory."),
        config: Path = typer.Option(None, "--config", help="Run config: its data and model sections apply."),
        model: str = typer.Option(None, "--model", help="Model (dir, hub id or .gguf) whose tokenizer to use."),
        eval_path: Path = typer.Option(None, "--eval", help="Eval file: validated too, and checked for overlap."),
        fmt: str = typer.Option(
            None,
            "--format",
            help="alpaca, sharegpt, messages, prompt_completion, text, spans (default: auto).",
        ),
        columns: list[str] = typer.Option(
            None, "--column", help="field=column mapping, e.g. prompt=text (repeatable)."
        ),
        template: str = typer.Option(None, "--template", help="auto (the model's chat template) or a name."),
        cutoff_len: int = typer.Option(None, "--cutoff-len", help="Maximum tokens per example."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Check a data set before training: format, template, masking, lengths, duplicates, conflicts."""
        raise typer.Exit(
            run_command(
                "validate",
                json_,
                lambda: validate_command(data, config, model, eval_path, fmt, columns, template, cutoff_len),
            )
        )
