"""Trials planned on N processes run as `tunepilot train --nproc N` (the launched engine): pilots of a
multi-GPU target and sweeps over a multi-GPU base. CPU, gloo, 2 processes, the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.distributed.test_ddp import _config
from tests.sweeps import sweep_cli
from tunepilot.config import load_config
from tunepilot.engines.base import Outcome, Report, TrialSpec
from tunepilot.engines.launched import LaunchedEngine
from tunepilot.engines.summary import read_summary
from tunepilot.stream import EvalPoint, read_stream
from tunepilot.transfer import TransferSettings
from tunepilot.transfer.pilot import run_pilots


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_pilots_of_a_two_gpu_target_run_on_two_processes(tmp_path, tiny_model):
    config = load_config(_config(tmp_path, tiny_model, "target"), ["nproc=2", "max_steps=40"])[0]
    settings = TransferSettings(pilot_factors=(0.5, 2.0), pilot_fraction=0.1)
    result = run_pilots(config, settings, tmp_path / "pilots")
    assert [p.state for p in result.pilots] == ["complete", "complete"]
    assert result.winner is not None and result.config.train.learning_rate == result.winner.learning_rate
    for i, pilot in enumerate(result.pilots):
        summary = read_summary(tmp_path / "pilots" / f"pilot-{i}" / "summary.json")
        assert summary.processes == 2 and summary.steps == 4
        assert sorted(pilot.reports) == [round(s / 4, 4) for s in (1, 2, 3, 4)]  # every eval of rank 0's stream
        evals = [
            r for r in read_stream(tmp_path / "pilots" / f"pilot-{i}" / "metrics.jsonl") if isinstance(r, EvalPoint)
        ]
        assert pilot.reports[1.0] == pytest.approx(evals[-1].eval_loss)


def test_a_stopped_launched_trial_ends_every_process_and_is_pruned(tmp_path, tiny_model):
    config = load_config(_config(tmp_path, tiny_model, "trial"), ["nproc=2", "max_steps=200", "eval_steps=1"])[0]
    engine = LaunchedEngine(poll_s=0.05)
    engine.start(TrialSpec(0, {}, config, run_dir=tmp_path / "t0"))
    first = engine.advance()
    assert isinstance(first[0], Report) and first[0].step == 1 and first[0].fraction == pytest.approx(1 / 200)
    proc = engine._proc
    outcome = engine.stop(0, "pruned by median")
    assert isinstance(outcome, Outcome) and outcome.state == "pruned" and proc.poll() is not None
    assert engine.active == [] and engine.advance() == []


def test_a_launched_trial_that_cannot_start_fails_with_its_output(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model, "bad")
    config = load_config(path, ["nproc=2"])[0]
    config.data.train = str(tmp_path / "gone.jsonl")  # removed after the config was checked
    engine = LaunchedEngine(poll_s=0.05)
    engine.start(TrialSpec(0, {}, config, run_dir=tmp_path / "t0"))
    (outcome,) = engine.advance()
    assert outcome.state == "failed" and "gone.jsonl" in outcome.reason


def test_a_sweep_over_a_two_gpu_base_launches_its_trials(tmp_path, tiny_model):
    with open(_config(tmp_path, tiny_model, "base")) as f:
        base = yaml.safe_load(f)
    sweep = {
        "base": {**base, "nproc": 2, "max_steps": 4, "eval_steps": 2},
        "space": {"learning_rate": [1e-3, 3e-3]},
        "sampler": {"name": "grid"},
        "pruner": "none",
        "budget": {"n_trials": 2},
    }
    body = sweep_cli(sweep, tmp_path)
    assert sorted(r["state"] for r in body["leaderboard"]) == ["complete", "complete"]
    summaries = [read_summary(d / "summary.json") for d in sorted((tmp_path / "sw" / "trials").iterdir()) if d.is_dir()]
    assert [s.processes for s in summaries] == [2, 2]


def test_a_launched_trial_reports_its_task_metric_as_the_objective(tmp_path, tiny_model):
    """The objective named by the sweep (accuracy, by generation) is what rank 0's stream reports."""
    from tests.search.test_objective_sweep import intent_base

    base = intent_base(tiny_model, tmp_path, 16, 6, max_steps=2, per_device_train_batch_size=2, nproc=2)
    sweep = {
        "base": base,
        "space": {"learning_rate": [1e-3]},
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "sampler": {"name": "grid"},
        "pruner": "none",
        "budget": {"n_trials": 1},
        "eval_points": 1,
    }
    body = sweep_cli(sweep, tmp_path)
    (row,) = body["leaderboard"]
    trial = next(d for d in (tmp_path / "sw" / "trials").iterdir() if d.is_dir())
    evals = [r for r in read_stream(trial / "metrics.jsonl") if isinstance(r, EvalPoint) and r.step > 0]
    assert row["state"] == "complete" and read_summary(trial / "summary.json").processes == 2
    assert row["value"] == pytest.approx(evals[-1].metrics["accuracy"]) and evals[-1].eval_loss != row["value"]


def test_a_failed_trial_s_reason_is_rank_0_s_error_whatever_the_other_ranks_print():
    """Rank 1, stopped by the launcher mid-import, may print a traceback longer than any fixed tail
    after rank 0's error envelope: the reason is still rank 0's message and problems."""
    from tunepilot.engines.launched import _reported_error

    envelope = {"version": 1, "ok": False, "error": {"message": "t0.yaml: 1 problem(s)", "problems": ["data.train: x"]}}
    text = "W... starting\n" + json.dumps(envelope, indent=2) + "\n" + "Traceback (most recent call last):\n" * 500
    assert _reported_error(text) == "t0.yaml: 1 problem(s); data.train: x"
    assert _reported_error("Traceback ...\nKeyboardInterrupt\n") is None  # then the output's end is the reason
