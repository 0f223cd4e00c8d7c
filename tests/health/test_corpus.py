"""diagnose against the independently labelled corpus of 81 real public logs (tests/fixtures/corpus).

The figures here are the ones measured and reported in docs/diagnose.md; the test guards them
against regressions. The rules were calibrated on the dev half only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import diagnose_corpus as corpus  # noqa: E402


@pytest.fixture(scope="module")
def judged():
    return {split: corpus.judge(corpus.load_cases(split)) for split in ("dev", "test")}


def test_the_corpus_is_81_labelled_logs_split_in_halves_and_none_crashes(judged):
    cases = judged["dev"] + judged["test"]
    assert len(cases) == 81 and abs(len(judged["dev"]) - len(judged["test"])) <= 1
    assert [c.id for c in cases if c.error] == []


def test_agreement_with_the_labels_holds_its_measured_level(judged):
    assert corpus.agreement(judged["dev"]) >= 0.85
    assert corpus.agreement(judged["test"]) >= 0.75
    low, high = corpus.bootstrap(judged["test"])
    assert low < corpus.agreement(judged["test"]) < high


def test_mid_run_checkpoints_are_reported_as_mid_run(tmp_path):
    history = [{"step": s, "loss": 2.0 - s / 100, "learning_rate": 1e-4, "epoch": s / 100} for s in range(10, 110, 10)]
    state = {"log_history": history, "global_step": 100, "max_steps": 400, "num_train_epochs": 4, "logging_steps": 10}
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state))
    assert _diagnosed(path)["mid_run"] is True
    text = CliRunner().invoke(app, ["diagnose", str(path)]).output
    assert "mid-run checkpoint" in text and "of 400 planned steps" in text
    state.update(global_step=400, log_history=history + [{"step": 400, "loss": 0.9, "epoch": 4.0}])
    path.write_text(json.dumps(state))
    assert _diagnosed(path)["mid_run"] is False


def _diagnosed(path) -> dict:
    result = CliRunner().invoke(app, ["diagnose", str(path), "--json"])
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_a_20_point_log_without_eval_gets_a_low_confidence_verdict(tmp_path):
    history = [{"step": s, "loss": 2.0 * 0.97**s, "learning_rate": 1e-4, "epoch": s / 20} for s in range(1, 21)]
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": history, "global_step": 20, "max_steps": 20}))
    body = _diagnosed(path)
    assert body["verdict"] == "too-short" or body["confidence"] == "low", body
