"""`tunepilot sweep SWEEP.yaml`: hyperparameter search with pruning, protocols, a budget; resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunepilot.cli.output import Result, run_command
from tunepilot.errors import ExitCode


def sweep_command(
    path: Path, sweep_dir: Path | None, storage: str | None, n_trials: int | None, quiet: bool,
    overrides: list[str] | None = None,
) -> Result:
    from tunepilot.search.sweep import prepare, run_sweep

    setup = prepare(path, sweep_dir, storage, n_trials, overrides)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    data = run_sweep(setup, log=log)
    ok = data["best"] is not None
    return Result("sweep", data, exit_code=ExitCode.OK if ok else ExitCode.FINDINGS, render=render)


def render(console: Console, d: dict[str, Any], limit: int = 20) -> None:
    obj = d["objective"]
    console.print(f"sweep {d['sweep_dir']} ({obj['metric']}, {obj['direction']}): {d['stopped']}")
    console.print(leaderboard_table(d["leaderboard"][:limit], obj["metric"]))
    for dec in d.get("decisions", []):
        choice = _cell(dec["choice"]) if not isinstance(dec["choice"], dict) else _params(dec["choice"])
        console.print(f"  [bold]{escape(dec['stage'])}[/]: {escape(choice)} - {escape(dec['reason'])}")
    if d.get("engine_seconds"):
        split = ", ".join(f"{k} {v:.1f} s" for k, v in d["engine_seconds"].items())
        console.print(f"engine time: {split}")
    if d["best"] is None:
        console.print("[red]no trial completed[/]; see the reasons above")
        return
    console.print(f"best: trial {d['best']['number']} {obj['metric']}={d['best']['value']:.6g}")
    if d.get("best_yaml"):
        console.print(f"  train it: tunepilot train {d['best_yaml']}")


SHORT = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "accum",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_alpha_multiplier": "alpha/r",
    "lora_dropout": "drop",
    "warmup_ratio": "warmup",
    "num_train_epochs": "epochs",
    "weight_decay": "wd",
    "lr_scheduler_type": "sched",
    "lora_target": "target",
}


def leaderboard_table(rows: list[dict[str, Any]], metric: str) -> Table:
    keys = sorted({k for r in rows for k in r["params"]})
    table = Table(
        "#",
        "state",
        metric[:12],
        "at%",
        *[SHORT.get(k, k)[:12] for k in keys],
        "steps",
        "s",
        "note",
        box=None,
        pad_edge=False,
    )
    for r in rows:
        note = (f"[{r['stage']}] " if r.get("stage") else "") + (r.get("reason") or "")
        value = "" if r["value"] is None else f"{r['value']:.5g}"
        table.add_row(
            str(r["number"]),
            r["state"],
            value,
            str(r["reached_pct"] or ""),
            *[_cell(r["params"].get(k)) for k in keys],
            str(r.get("steps", "")),
            f"{r.get('seconds', 0):.0f}",
            note[:40],
        )
    for column in table.columns:
        column.no_wrap = True
    return table


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{SHORT.get(k, k)}={_cell(v)}" for k, v in params.items())


def _cell(v: Any) -> str:
    return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(
        path: Path = typer.Argument(
            ..., help="Sweep file (YAML): base config, space, objective, budget, engine."
        ),
        out: Path = typer.Option(
            None, "--dir", help="Sweep directory (default: output_dir or sweeps/<name>)."
        ),
        storage: str = typer.Option(
            None,
            "--storage",
            help="Optuna RDB URL shared by workers (default: sqlite in the sweep directory).",
        ),
        n_trials: int = typer.Option(None, "--n-trials", help="Override budget.n_trials."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a base-config key: --set model_name_or_path=DIR (repeatable)."
        ),
        json_: bool = typer.Option(False, "--json", help="Print a JSON envelope instead of text."),
    ) -> None:
        """Search hyperparameters (Optuna ask/tell in engine slots); re-run the same command to resume."""
        raise typer.Exit(
            run_command("sweep", json_, lambda: sweep_command(path, out, storage, n_trials, json_, set_))
        )
