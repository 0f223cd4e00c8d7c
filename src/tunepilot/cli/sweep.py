"""`tunepilot sweep SWEEP.yaml`: hyperparameter search with pruning, protocols, a budget; resumable."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunepilot.cli.output import Result, quiet_optuna, run_command
from tunepilot.errors import ExitCode


def sweep_command(
    path: Path,
    sweep_dir: Path | None,
    storage: str | None,
    n_trials: int | None,
    quiet: bool,
    overrides: list[str] | None = None,
    force_resume: bool = False,
    gpus: str | None = None,
    heartbeat: int | None = None,
    grace: int | None = None,
    worker: int | None = None,
) -> Result:
    from tunepilot.search.study import WorkerOptions, check_storage, normalize_url, redact_url
    from tunepilot.search.sweep import prepare, run_sweep
    from tunepilot.search.workers import WORKER_STORAGE_ENV, parse_gpus

    quiet_optuna()
    if worker is not None:  # a worker started by --gpus: the storage URL comes in its environment
        storage = os.environ.get(WORKER_STORAGE_ENV, storage)
    _check_beat(heartbeat, grace)
    gpu_list = parse_gpus(gpus) if gpus is not None else None
    setup = prepare(path, sweep_dir, storage, n_trials, overrides, force_resume=force_resume)
    setup.storage = normalize_url(setup.storage)
    beat = {k: v for k, v in {"heartbeat_s": heartbeat, "grace_s": grace}.items() if v is not None}
    setup.worker = WorkerOptions(index=worker, spawned=worker is not None, **beat)
    prefix = f"[worker {worker}] " if worker is not None else ""
    log = (lambda msg: None) if quiet else (lambda msg: print(prefix + msg, file=sys.stderr, flush=True))
    if setup.storage != "memory":
        if _is_dir_storage(setup):
            _make_dir(setup.sweep_dir)
        check_storage(setup.storage)  # one message for a bad URL, a missing driver or a junk study.db
    if gpu_list is not None:
        data = _run_gpus(setup, gpu_list, path, n_trials, overrides, force_resume, heartbeat, grace, quiet, log)
    else:
        data = run_sweep(setup, log=log)
    data["storage"] = redact_url(data["storage"])
    ok = data["best"] is not None
    return Result("sweep", data, exit_code=ExitCode.OK if ok else ExitCode.FINDINGS, render=render)


def _make_dir(path: Path) -> None:
    from tunepilot.errors import UserError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the sweep directory ({e.strerror}); choose another --dir") from None


def _is_dir_storage(setup: Any) -> bool:
    from tunepilot.search.study import default_storage

    return setup.storage == default_storage(setup.sweep_dir)


def _check_beat(heartbeat: int | None, grace: int | None) -> None:
    from tunepilot.errors import UserError

    if heartbeat is not None and heartbeat < 1:
        raise UserError(f"--heartbeat {heartbeat}: give a whole number of seconds, at least 1")
    if grace is not None and grace <= (heartbeat or 1):
        raise UserError(f"--grace {grace}: must be longer than the heartbeat interval (several intervals)")


def _run_gpus(setup, gpus, path, n_trials, overrides, force_resume, heartbeat, grace, quiet, log) -> dict[str, Any]:
    """--gpus: one worker process per GPU on one study; then the results, from the storage."""
    from tunepilot.search.workers import run_local_workers

    def argv(i: int) -> list[str]:
        args = ["sweep", str(path), "--dir", str(setup.sweep_dir), "--json", "--worker", str(i)]
        args += [f"--n-trials={n_trials}"] if n_trials is not None else []
        args += [f"--heartbeat={heartbeat}"] if heartbeat is not None else []
        args += [f"--grace={grace}"] if grace is not None else []
        args += ["--force-resume"] if force_resume else []
        args += ["--quiet"] if quiet else []
        for o in overrides or []:
            args += ["--set", o]
        return args

    return run_local_workers(setup, gpus, argv, log)


def render(console: Console, d: dict[str, Any], limit: int = 20) -> None:
    obj = d["objective"]
    console.print(f"sweep {d['sweep_dir']} ({obj['metric']}, {obj['direction']}): {d['stopped']}")
    table = leaderboard_table(d["leaderboard"][:limit], obj["metric"])
    # In a file or a pipe there is no terminal width to fit: print every column in full (rich would
    # squeeze the table into 80 columns and cut the trial number).
    if console.is_terminal:
        console.print(table)
    else:
        saved, console.width = console.width, 10_000  # the table's natural width, every column whole
        try:
            console.print(table)
        finally:
            console.width = saved
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
        path: Path = typer.Argument(..., help="Sweep file (YAML): base config, space, objective, budget, engine."),
        out: Path = typer.Option(None, "--dir", help="Sweep directory (default: output_dir or sweeps/<name>)."),
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
        force_resume: bool = typer.Option(
            False, "--force-resume", help="Resume the study even though the sweep file changed since it was created."
        ),
        gpus: str = typer.Option(
            None,
            "--gpus",
            help="Start one worker process per local GPU on one study, e.g. --gpus 0,1,2,3 (CUDA_VISIBLE_DEVICES "
            "per worker). Workers on other machines join with the same --storage.",
        ),
        heartbeat: int = typer.Option(
            None, "--heartbeat", help="Seconds between a shared study's trial heartbeats (default 30)."
        ),
        grace: int = typer.Option(
            None,
            "--grace",
            help="Seconds without a heartbeat after which a worker's trial is failed and retried "
            "(default 3x --heartbeat).",
        ),
        worker: int = typer.Option(None, "--worker", hidden=True, help="Set by --gpus for the workers it starts."),
        quiet_: bool = typer.Option(False, "--quiet", hidden=True, help="No progress lines on stderr."),
    ) -> None:
        """Search hyperparameters (Optuna ask/tell in engine slots); re-run the same command to resume."""
        raise typer.Exit(
            run_command(
                "sweep",
                json_,
                lambda: sweep_command(
                    path,
                    out,
                    storage,
                    n_trials,
                    (json_ and worker is None) or quiet_,
                    set_,
                    force_resume,
                    gpus,
                    heartbeat,
                    grace,
                    worker,
                ),
            )
        )
