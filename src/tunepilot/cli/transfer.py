"""`tunepilot transfer`: move a proxy's winning config to a target model by explicit rules (+ pilots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tunepilot.cli.output import Result, run_command
from tunepilot.config import dump_config, load_config, parse_overrides
from tunepilot.io import atomic_write_text


def transfer_command(
    proxy: Path,
    target: Path,
    config_path: Path,
    requested: dict[str, Any],
    proxy_gpus: int,
    rule_set: list[str],
    output: Path | None,
    target_name: str | None,
    pilot: bool = False,
    pilot_dir: Path | None = None,
) -> Result:
    from tunepilot.transfer import TransferSettings, transfer_config, with_overrides

    config, warnings = load_config(config_path, check_paths=False)
    settings = with_overrides(TransferSettings(), parse_overrides(rule_set))
    result = transfer_config(proxy, target, config, requested, settings, proxy_gpus, target_name)
    data = result.to_dict()
    final = result.config
    if pilot:
        from tunepilot.transfer.pilot import run_pilots

        root = pilot_dir or Path(final.output.output_dir) / "pilots"
        pilots = run_pilots(result.config, settings, root)
        data["pilot"] = pilots.to_dict()
        final = pilots.config
        data["target_config"]["learning_rate"] = final.train.learning_rate
    if output is not None:
        atomic_write_text(output, dump_config(final))
        data["written"] = str(output)
    return Result("transfer", data, render=_render, warnings=warnings)


def _render(console: Console, d: dict[str, Any]) -> None:
    p, t = d["proxy_model"], d["target_model"]
    console.print(
        f"[bold]{p['name']}[/] (hidden {p['hidden_size']}, {p['num_layers']} layers, "
        f"{p['num_params'] / 1e9:.2f}B) -> [bold]{t['name']}[/] (hidden {t['hidden_size']}, "
        f"{t['num_layers']} layers, {t['num_params'] / 1e9:.2f}B)"
    )
    for i, step in enumerate(d["rules"], 1):
        changed = ", ".join(f"{k} {_fmt(c['from'])} -> {_fmt(c['to'])}" for k, c in step["changed"].items())
        console.print(
            f"{i}. [cyan]{step['rule']}[/]: {escape(step['reason'])}" + (escape(f"  [{changed}]") if changed else "")
        )
        console.print(f"   [dim]source: {escape(step['source'])}[/]")
    tc = d["target_config"]
    console.print(
        "[bold]target config:[/] "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in tc.items())
        + f"  (LR x{d['lr_factor']:.3g} overall)"
    )
    if "pilot" in d:
        from tunepilot.transfer.pilot import render_pilots

        render_pilots(console, d["pilot"])
    if "written" in d:
        console.print(f"written: {d['written']}")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def register(app: typer.Typer) -> None:
    @app.command("transfer")
    def transfer(
        proxy_model: Path = typer.Option(..., "--proxy-model", help="Proxy model dir (config.json is enough)."),
        target_model: Path = typer.Option(..., "--target-model", help="Target model dir (config.json is enough)."),
        config: Path = typer.Option(..., "--config", help="The proxy's winning run config YAML."),
        proxy_gpus: int = typer.Option(
            None, "--proxy-gpus", min=1, help="GPUs the proxy config ran on (default: its nproc)."
        ),
        target_gpus: int = typer.Option(None, "--target-gpus", min=1, help="GPUs for the target run."),
        target_batch: int = typer.Option(None, "--target-batch", min=1, help="Target micro-batch per GPU."),
        target_accum: int = typer.Option(None, "--target-accum", min=1, help="Target gradient accumulation."),
        target_rank: int = typer.Option(None, "--target-rank", min=1, help="Target LoRA rank (default: rule)."),
        target_method: str = typer.Option(None, "--target-method", help="lora, qlora or full (default: proxy's)."),
        target_name: str = typer.Option(None, "--target-name", help="model_name_or_path to write (hub id or dir)."),
        rule_set: list[str] = typer.Option(
            [],
            "--rule-set",
            help="Rule setting, e.g. batch_exponent=1 or width_exponents.llama=0.9 (repeatable).",
        ),
        output: Path = typer.Option(None, "--output", "-o", help="Write the target config YAML here."),
        pilot: bool = typer.Option(False, "--pilot", help="Check the LR with short pilot runs on the target."),
        pilot_dir: Path = typer.Option(None, "--pilot-dir", help="Pilot runs' directory (<output_dir>/pilots)."),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Scale LR, rank/alpha and batch layout from a proxy model to a target model, step by step."""
        requested = {
            k: v
            for k, v in {
                "gpus": target_gpus,
                "per_device_train_batch_size": target_batch,
                "gradient_accumulation_steps": target_accum,
                "lora_rank": target_rank,
                "method": target_method,
            }.items()
            if v is not None
        }
        if target_method is not None and target_method not in ("lora", "qlora", "full"):
            raise typer.BadParameter("--target-method must be lora, qlora or full")
        raise typer.Exit(
            run_command(
                "transfer",
                json_,
                lambda: transfer_command(
                    proxy_model,
                    target_model,
                    config,
                    requested,
                    proxy_gpus,
                    rule_set,
                    output,
                    target_name,
                    pilot,
                    pilot_dir,
                ),
            )
        )
