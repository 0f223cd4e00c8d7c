"""Pilot runs on tiny random models: mechanics of the grid, the engine loop, the winner and the cost."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.engines.base import Outcome, Report
from tunepilot.engines.summary import FailureKind
from tunepilot.testing import tiny_model_dir, write_arithmetic_chat
from tunepilot.transfer.pilot import Pilot, choose_winner


def write_chat(path, n, seed=0):
    return write_arithmetic_chat(path, n, seed, answer="{a} + {b} = {c}.")


def test_winner_is_compared_at_the_largest_common_fraction():
    a = Pilot(0, 0.5, 1e-4, {0.25: 2.0, 0.5: 1.8, 1.0: 1.5}, "complete")
    b = Pilot(1, 1.0, 2e-4, {0.25: 1.9, 0.5: 1.7}, "complete")  # no report at 1.0
    c = Pilot(2, 2.0, 4e-4, {0.25: 1.0}, "failed", "divergence")
    winner, at = choose_winner([a, b, c])
    assert at == 0.5 and winner is b


def test_transfer_with_pilots_writes_the_winner(tmp_path):
    proxy = tiny_model_dir(tmp_path / "proxy", hidden=32)
    target = tiny_model_dir(tmp_path / "target", hidden=64)
    train, held = write_chat(tmp_path / "train.jsonl", 160), write_chat(tmp_path / "eval.jsonl", 8, seed=1)
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"model_name_or_path: {proxy}\ntrain: {train}\neval: {held}\ncutoff_len: 48\n"
        f"learning_rate: 2.0e-3\nlora_rank: 4\nper_device_train_batch_size: 4\nnum_train_epochs: 2\n"
        f"device: cpu\nwarmup_ratio: 0.1\noutput_dir: {tmp_path / 'run'}\n"
    )
    out = tmp_path / "target.yaml"
    result = CliRunner().invoke(
        app,
        [
            "transfer",
            "--proxy-model",
            str(proxy),
            "--target-model",
            str(target),
            "--config",
            str(config),
            "--pilot",
            "-o",
            str(out),
            "--json",
            "--rule-set",
            "pilot_factors=[0.5, 1.0, 1000.0]",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    pilot = body["pilot"]
    assert body["rules"] and pilot["planned_steps"] == 80  # 160 records / 4 x 2 epochs
    assert pilot["steps_per_pilot"] == 7  # ceil(8% of 80)
    lrs = [p["learning_rate"] for p in pilot["pilots"]]
    assert lrs[2] == pytest.approx(1000 * lrs[1], rel=0.01)
    assert pilot["winner_learning_rate"] in lrs
    winner = next(p for p in pilot["pilots"] if p["learning_rate"] == pilot["winner_learning_rate"])
    at = pilot["compared_at_fraction"]
    assert all(winner["reports"][str(at)] <= p["reports"][str(at)] for p in pilot["pilots"] if p["state"] == "complete")
    assert body["target_config"]["learning_rate"] == pilot["winner_learning_rate"]
    assert pilot["cost"]["pilot_steps"] <= 3 * 7
    assert pilot["cost"]["share_of_full_run"] == pytest.approx(pilot["cost"]["pilot_steps"] / 80)
    assert f"learning_rate: {pilot['winner_learning_rate']}" in out.read_text()


class ScriptedEngine:
    """An engine that replays scripted reports: checks run_pilots speaks the Engine protocol only."""

    name = "scripted"

    def __init__(self, curves):
        self.curves, self.current = curves, None

    @property
    def slots(self):
        return 1

    @property
    def active(self):
        return [self.current.number] if self.current else []

    def start(self, spec):
        self.current = spec

    def advance(self):
        spec, self.current = self.current, None
        curve = self.curves[spec.number]
        out = [Report(spec.number, f, int(f * 10), v) for f, v in zip(spec.report_fractions, curve, strict=False)]
        state = "complete" if len(curve) == len(spec.report_fractions) else "failed"
        return [
            *out,
            Outcome(
                spec.number,
                state,
                value=curve[-1],
                reason=None if state == "complete" else "diverged",
                failure=None if state == "complete" else FailureKind.NON_FINITE,
                steps=len(curve) * 2,
                seconds=1.0,
            ),
        ]

    def stop(self, number, reason):
        raise AssertionError("not used")

    def close(self):
        pass


def test_diverged_pilots_never_win(tmp_path):
    from tunepilot.config import build_config
    from tunepilot.transfer.pilot import run_pilots
    from tunepilot.transfer.settings import TransferSettings

    data = write_chat(tmp_path / "d.jsonl", 40)
    config, _ = build_config({"model_name_or_path": "x", "train": str(data), "max_steps": 100, "learning_rate": 1e-4})
    engine = ScriptedEngine({0: [2.0, 1.9, 1.8, 1.7], 1: [1.9, 1.7, 1.5, 1.4], 2: [1.0]})
    result = run_pilots(config, TransferSettings(), tmp_path / "p", engine=engine)
    assert result.winner.number == 1 and result.compared_at == 1.0
    assert result.config.train.learning_rate == pytest.approx(1e-4)
    assert [p.state for p in result.pilots] == ["complete", "complete", "failed"]
