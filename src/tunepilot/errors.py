"""Named exit codes and the one exception type for user mistakes.

A user mistake (bad path, bad YAML, unknown key, malformed record) raises `UserError`: the CLI prints
its message and exits with its code, never a traceback. A bug raises anything else and keeps its
traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FINDINGS = 1  # findings of severity error (validate/diagnose) or a failed run
    USAGE = 2  # usage or config error
    INTERRUPTED = 3  # interrupted; re-run with --resume


class UserError(Exception):
    """A mistake the user can fix: one message naming the file, line or key, and what to do."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
