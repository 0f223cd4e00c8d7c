"""Helpers for the reliability tests: run a command in-process with --json and check the contract
for a user mistake (one message, a named exit code, a JSON envelope on stdout, no traceback)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from tunepilot.cli.app import app


@dataclass
class Outcome:
    code: int
    envelope: dict[str, Any]
    exception: BaseException | None
    stderr: str

    @property
    def message(self) -> str:
        error = self.envelope.get("error") or {}
        return "\n".join([error.get("message", ""), *error.get("problems", [])])


def run_cli(*args: Any) -> Outcome:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    try:
        envelope = json.loads(result.stdout)
    except json.JSONDecodeError:
        envelope = {"unparsed stdout": result.stdout}
    return Outcome(result.exit_code, envelope, exception, result.stderr)


def assert_user_error(out: Outcome, *names: str, code: int = 2) -> None:
    """Exit `code`, no exception escaped (no traceback), a JSON error envelope naming every `names`."""
    assert out.exception is None, f"traceback: {out.exception!r}"
    assert "Traceback" not in out.stderr
    assert out.code == code, (out.code, out.envelope)
    assert out.envelope["version"] == 1 and out.envelope["ok"] is False and out.envelope["exit_code"] == code
    for name in names:
        assert name in out.message, (name, out.message)
