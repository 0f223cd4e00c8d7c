"""The `tunepilot` command line: a thin layer that parses arguments and calls command functions.

Each command lives in its own module under `tunepilot.cli` with a `register(app)` function; adding a
command is one module plus one line in `COMMANDS`.
"""

from __future__ import annotations

import importlib
import os
import warnings

import typer

from tunepilot import __version__

COMMANDS = (
    "tunepilot.cli.train",
    "tunepilot.cli.evaluate",
    "tunepilot.cli.sweep",
    "tunepilot.cli.report",
    "tunepilot.cli.recommend",
    "tunepilot.cli.transfer",
    "tunepilot.cli.lrfind",
    "tunepilot.cli.diagnose",
    "tunepilot.cli.validate",
    "tunepilot.cli.export",
)

app = typer.Typer(
    name="tunepilot",
    help="Find good LoRA/QLoRA hyperparameters before the expensive run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunepilot {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """validate -> recommend -> lr-find -> sweep -> transfer -> train -> diagnose -> export"""


for _name in COMMANDS:
    importlib.import_module(_name).register(app)


def main() -> None:
    _quiet_libraries()
    from tunepilot.cli.launch import launched_argv

    argv = launched_argv()  # one of the N processes `--nproc N` started: its command line
    app(args=argv) if argv is not None else app()


def _quiet_libraries() -> None:
    """Our own progress bars and messages only: library load bars and deprecation chatter go quiet."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Optuna: its experimental-API notes, and the heartbeat note (the sweep records heartbeats for
    # ask/tell itself); its INFO lines per trial are quieted by quiet_optuna() where a command uses it
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


if __name__ == "__main__":
    main()
