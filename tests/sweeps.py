"""`tunepilot sweep` from a test, as a user runs it: the sweep as a dict in, its --json envelope out."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app


def sweep_cli(sweep: dict, tmp_path: Path) -> dict:
    """Write `sweep` to tmp_path/sweep.yaml, run it into tmp_path/sw, assert exit 0, return the envelope."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "sw"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])
