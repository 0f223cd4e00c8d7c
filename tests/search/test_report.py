"""`tunepilot report SWEEP_DIR`: one HTML page with curves, Optuna plots, decisions and leaderboard."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.search.sweep import prepare, run_sweep


def test_report_of_a_staged_replay_sweep(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves,
        space={"learning_rate": {"low": 1e-6, "high": 1e-2, "log": True}, "lora_rank": [4, 8, 16]},
        protocol={"name": "staged", "judge_at": 0.3},
    )
    run_sweep(prepare(path, tmp_path / "sweep"))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "sweep"), "--json", "--cdn"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert body["report"].endswith("report.html") and body["trials"] == 5
    for needle in (
        "Learning curves",
        "Optimization history",
        "Parallel coordinates",
        "Parameter importance",
        "Protocol decisions",
        "one full run with the winner",
        "2r kept",
    ):
        assert needle in page, needle
    # every trial is drawn; the LR-stage ones were stopped by the protocol and are marked pruned
    assert all(f"#{n} " in page for n in range(5)) and page.count("pruned") >= 4


def test_report_of_a_directory_that_is_not_a_sweep(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep directory" in result.output
