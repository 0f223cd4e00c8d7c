"""`tunepilot export RUN_DIR -o OUT`: the merged model (or the adapter), GGUF and an Ollama Modelfile,
with a model card. Exit codes: 0 written, 2 a usage problem (bad source, base mismatch, no space,
converter missing), 3 interrupted (nothing half-written is left as OUT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tunepilot.cli.output import Result, run_command, stderr_console


def export_command(
    source: Path,
    out: Path,
    trial: str | None,
    adapter_only: bool,
    gguf: list[str],
    base: str | None,
    dtype: str,
    max_shard_size: str,
    force: bool,
    show_progress: bool,
) -> Result:
    from transformers.utils import logging as hf_logging

    from tunepilot.export import export_run

    hf_logging.disable_progress_bar()  # our own progress lines only (loading and shard-writing bars off)
    console = stderr_console()
    log = (lambda msg: console.print(f"[dim]{msg}[/]")) if show_progress else None
    data = export_run(
        source,
        out,
        trial=trial,
        adapter_only=adapter_only,
        gguf=gguf,
        base=base,
        dtype=dtype,
        max_shard_size=max_shard_size,
        force=force,
        log=log,
    )
    return Result("export", data, render=_render)


def _render(console: Console, d: dict[str, Any]) -> None:
    what = {"merged": "merged model", "full": "fine-tuned model", "adapter": "adapter"}[d["kind"]]
    origin = d["run_dir"] if d["trial"] is None else f"trial {d['trial']} ({d['run_dir']})"
    console.print(f"[bold green]exported[/] the {what} of {origin} to {d['out']} ({d['bytes'] / 2**20:.1f} MiB)")
    console.print(f"  base model: {d['base_model']}")
    console.print(f"  files: {', '.join(d['files'])}")
    for note in d["notes"]:
        console.print(f"  [yellow]note:[/] {note}")


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        source: Path = typer.Argument(..., help="Run directory (tunepilot train) or sweep directory."),
        out: Path = typer.Option(..., "-o", "--out", help="Directory to write (must be empty, or --force)."),
        trial: str = typer.Option(None, "--trial", help="From a sweep directory: best (default) or a trial number."),
        adapter_only: bool = typer.Option(False, "--adapter-only", help="Write the PEFT adapter, not a merged model."),
        gguf: list[str] = typer.Option(
            [], "--gguf", help="Also write a GGUF: f16, bf16, q8_0, q4_k_m... (repeatable)."
        ),
        base: str = typer.Option(None, "--base", help="Base model to merge into (default: the run's recorded base)."),
        dtype: str = typer.Option(
            "auto", "--dtype", help="Weights dtype: auto (the base's), float32, bfloat16, float16."
        ),
        max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard, e.g. 5GB."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Merge the adapter into the base and write safetensors, tokenizer, model card (and GGUF, Modelfile)."""
        raise typer.Exit(
            run_command(
                "export",
                json_,
                lambda: export_command(
                    source, out, trial, adapter_only, gguf, base, dtype, max_shard_size, force, not json_
                ),
            )
        )
