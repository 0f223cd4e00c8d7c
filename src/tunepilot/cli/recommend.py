"""`tunepilot recommend`: a starting config for this model, data and GPU, with a reason per value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunepilot.cli.output import Result, run_command
from tunepilot.config import build_config, dump_config
from tunepilot.errors import UserError
from tunepilot.io import atomic_write_text


def recommend_command(
    model: Path, data: Path, gpu_memory: float | None, task: str, method: str, output: Path | None, gpus: int = 1
) -> Result:
    from tunepilot.recommend import recommend, run_config_raw

    if gpu_memory is not None and not (math.isfinite(gpu_memory) and 0 < gpu_memory <= 100_000):
        raise UserError(
            f"--gpu-memory {gpu_memory}: give the memory of one GPU in GiB (a number > 0, "
            "e.g. 80 for an H100), or leave it out to skip the fit check"
        )
    rec, info, stats = recommend(model, data, gpu_memory, task, method, gpus=gpus)
    out: dict[str, Any] = {
        "model": info.summary(),
        "data": vars(stats),
        "task": task,
        "method": method,
        "config": rec.values,
        "reasons": rec.reasons,
        "memory": rec.memory.to_dict(),
        "gpus": gpus,
        "strategies": rec.strategies,  # per-GPU estimate of each multi-GPU strategy (None on one GPU)
    }
    if output is not None:
        config, _ = build_config(run_config_raw(rec, model, data, method), source="recommendation")
        atomic_write_text(output, dump_config(config))
        out["written"] = str(output)
    return Result("recommend", out, render=_render)


def _render(console: Console, d: dict[str, Any]) -> None:
    m, s = d["model"], d["data"]
    console.print(
        f"[bold]{m['name']}[/]: {m['num_params'] / 1e9:.2f}B params, hidden {m['hidden_size']}, "
        f"{m['num_layers']} layers ({m['family']}); data: {s['records']} records, "
        f"p99 {s['p99_tokens']} tokens ({s['token_source']})"
    )
    for key, value in d["config"].items():
        console.print(f"  [cyan]{key}[/]: {value}\n      [dim]{escape(d['reasons'][key])}[/]")
    mem = d["memory"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in mem["parts_gib"].items())
    verdict = {True: "[green]fits[/]", False: "[red]does not fit[/]", None: "not checked"}[mem["fits"]]
    console.print(f"memory per GPU: {mem['total_gib']:.1f} GiB ({parts}) -> {verdict}")
    for suggestion in mem["suggestions"]:
        console.print(f"  - {escape(suggestion)}")
    for name, est in (d.get("strategies") or {}).items():
        fits = {True: "fits", False: "does not fit", None: "not checked"}[est["fits"]]
        console.print(f"  {name} on {d['gpus']} GPUs: {est['total_gib']:.1f} GiB per GPU ({fits})")
    if "written" in d:
        console.print(f"written: {d['written']} (run it with: tunepilot train {d['written']})")


def register(app: typer.Typer) -> None:
    @app.command("recommend")
    def recommend(
        model: Path = typer.Option(..., "--model", help="Model dir (config.json is enough) or .gguf file."),
        data: Path = typer.Option(..., "--data", help="Training data file."),
        gpu_memory: float = typer.Option(None, "--gpu-memory", help="GPU memory in GiB (as nvidia-smi shows)."),
        task: str = typer.Option("sft", "--task", help="sft, pretrain, classification or extraction."),
        method: str = typer.Option("lora", "--method", help="lora, qlora or full."),
        output: Path = typer.Option(None, "--output", "-o", help="Write a config YAML that `tunepilot train` runs."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
        gpus: int = typer.Option(1, "--gpus", min=1, max=4096, help="GPUs for the run: picks DDP or FSDP sharding."),
    ) -> None:
        """Recommend a starting config (LR, rank, batch, epochs, cutoff...) with reasons and memory."""
        if task not in ("sft", "pretrain", "classification", "extraction"):
            raise typer.BadParameter("--task must be sft, pretrain, classification or extraction")
        if method not in ("lora", "qlora", "full"):
            raise typer.BadParameter("--method must be lora, qlora or full")
        command = lambda: recommend_command(model, data, gpu_memory, task, method, output, gpus)  # noqa: E731
        raise typer.Exit(run_command("recommend", json_, command))
