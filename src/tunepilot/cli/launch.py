"""N processes of one command through torchrun (torch's own launcher), as LLaMA-Factory does when it
sees several GPUs: `tunepilot train CONFIG --nproc N`, `tunepilot lr-find CONFIG --nproc N`. Under
torchrun (or `accelerate launch`) every process runs the command; rank 0 prints the one result."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from tunepilot.cli.output import Result, run_command
from tunepilot.errors import ExitCode

ARGV_ENV = "TUNEPILOT_LAUNCH_ARGV"


def launched_argv() -> list[str] | None:
    """The command line `launch` gave this process, when it is one of the processes it started."""
    import json

    raw = os.environ.get(ARGV_ENV)
    return json.loads(raw) if raw and launched() else None


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    return "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: list[str]) -> int:
    """Start `tunepilot ARGV` as `nproc` processes on this machine; their exit code."""
    import json

    from torch.distributed.run import main as torchrun

    # The command's own arguments travel in the environment: torchrun's parser would read options of
    # ours that share a prefix with its own (--start as --start-method) even after the module name.
    os.environ[ARGV_ENV] = json.dumps(argv)
    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "tunepilot.cli.app"])
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # torchrun's ChildFailedError: a rank failed; its own output said why
        code = _first_exit_code(e)
        print(
            f"{argv[0]} --nproc {nproc}: a process failed ({type(e).__name__}); see its output above", file=sys.stderr
        )
        return int(code) if code in (ExitCode.USAGE, ExitCode.INTERRUPTED) else int(ExitCode.FINDINGS)
    return 0


def _first_exit_code(error: Exception) -> int | None:
    """The exit code of the rank that failed first (the root cause; torchrun stops the others), so
    that a rank's UserError (2) or interruption (3) is the job's exit code too."""
    first = getattr(error, "get_first_failure", None)
    if first is None:
        return None
    _, failure = first()
    return getattr(failure, "exitcode", None)


def run_ranked(name: str, json_: bool, command: Callable[[bool], Result]) -> int:
    """Run a command function (taking show_progress) on this rank: rank 0 prints, the others are silent."""
    if rank() == 0:
        return run_command(name, json_, lambda: command(not json_))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        return run_command(name, True, lambda: command(False))
