"""One renderer for every command: human text by default, a versioned JSON envelope with --json.

Command functions return a `Result`; they never print their final answer themselves. The envelope
is `{"version": 1, "command": ..., "ok": ..., "exit_code": ..., **data}` every time, and an error
is `{"version": 1, "command": ..., "ok": false, "exit_code": 2, "error": {"message", "problems"}}`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from tunepilot.errors import ExitCode, UserError

ENVELOPE_VERSION = 1


@dataclass
class Result:
    command: str
    data: dict[str, Any]
    exit_code: ExitCode = ExitCode.OK
    render: Callable[[Console, dict[str, Any]], None] | None = None  # human text
    warnings: list[str] = field(default_factory=list)
    warned: bool = False  # the warnings were printed at the start (print_warnings); JSON still carries them

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def print_warnings(warnings: list[str]) -> None:
    """Warnings about the config (ignored keys...), printed before the work starts, not after it."""
    err = stderr_console()
    for w in warnings:
        err.print(f"[yellow]warning:[/] {w}")


def envelope(result: Result) -> dict[str, Any]:
    out = {"version": ENVELOPE_VERSION, "command": result.command, "ok": result.ok, "exit_code": int(result.exit_code)}
    if result.warnings:
        out["warnings"] = result.warnings
    out.update(result.data)
    return out


def emit(result: Result, as_json: bool) -> int:
    if as_json:
        sys.stdout.write(json.dumps(envelope(result), indent=2, default=str) + "\n")
    else:
        err = stderr_console()
        for w in [] if result.warned else result.warnings:
            err.print(f"[yellow]warning:[/] {w}")
        if result.render:
            result.render(stdout_console(), result.data)
        else:
            stdout_console().print_json(json.dumps(result.data, default=str))
    return int(result.exit_code)


def emit_error(command: str, error: UserError, as_json: bool) -> int:
    if as_json:
        body = {
            "version": ENVELOPE_VERSION,
            "command": command,
            "ok": False,
            "exit_code": int(error.code),
            "error": {"message": error.message, "problems": error.problems},
        }
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        stderr_console().print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    return int(error.code)


# How to continue each command after Ctrl-C or SIGTERM; a command not named here just starts over.
RESUME_HINTS = {
    "train": "re-run the same command with --resume to continue from the last checkpoint",
    "sweep": "re-run the same command to resume the sweep (completed trials are kept)",
}


def run_command(command: str, as_json: bool, fn: Callable[[], Result]) -> int:
    """Call a command function; turn a UserError into one message and its exit code.

    SIGTERM is handled like Ctrl-C (KeyboardInterrupt) while the command runs, so a scheduler's
    stop writes the same summaries and exits 3 (interrupted, resumable).
    """
    try:
        with _sigterm_as_interrupt():
            result = fn()
    except UserError as e:
        return emit_error(command, e, as_json)
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(command, "re-run the same command to start it again")
        return emit_error(command, UserError(f"interrupted; {hint}", ExitCode.INTERRUPTED), as_json)
    return emit(result, as_json)


class _sigterm_as_interrupt:
    """Raise KeyboardInterrupt on SIGTERM in the main thread; the previous handler comes back after."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; tunepilot prints its own progress. Set by the CLI, not the library."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
