"""One process per run directory, --resume only with the settings that trained the run, and
interrupts (Ctrl-C, SIGTERM) that leave summaries and name the real command to continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from cli_contract import assert_user_error, run_cli

from tunepilot.config import build_config, dump_config, resume_conflicts
from tunepilot.errors import UserError
from tunepilot.io import RunDirLock


@pytest.fixture
def config_file(tmp_path, tiny_model):
    from tunepilot.testing import write_arithmetic_chat

    data = write_arithmetic_chat(tmp_path / "train.jsonl", 8)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model)},
                "data": {"train": str(data), "cutoff_len": 64},
                "train": {"device": "cpu", "max_steps": 3, "per_device_train_batch_size": 2, "save_steps": 1},
                "output": {"output_dir": str(tmp_path / "run")},
            }
        )
    )
    return path


def _raw(**train):
    return {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "train": train}


# ---------------------------------------------------------------------------------- the lock
def test_second_holder_is_refused_naming_the_pid(tmp_path):
    with (
        RunDirLock(tmp_path / "run"),
        pytest.raises(UserError, match=f"pid {os.getpid()}"),
        RunDirLock(tmp_path / "run"),
    ):
        pass
    with RunDirLock(tmp_path / "run"):  # released on exit: taken again
        pass
    assert not (tmp_path / "run" / "run.lock").exists()


def test_train_refused_while_another_train_holds_the_directory(config_file, tmp_path):
    with RunDirLock(tmp_path / "run"):
        out = run_cli("train", config_file)
    assert_user_error(out, str(tmp_path / "run"), f"pid {os.getpid()}", "another tunepilot train")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing of the holder's was touched


def test_a_dead_holders_lock_is_taken_over(config_file, tmp_path):
    run_dir = tmp_path / "run"
    code = (
        f"from tunepilot.io import RunDirLock; import time\nwith RunDirLock({str(run_dir)!r}):\n"
        "    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_user_error(run_cli("train", config_file), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / "run.lock").read_text() == str(holder.pid)  # a killed holder leaves its file behind
    out = run_cli("train", config_file)
    assert out.code == 0, out.envelope
    assert not (run_dir / "run.lock").exists()


# ---------------------------------------------------------------------------------- resume
def test_resume_conflicts_lists_the_keys_that_change_training():
    saved, _ = build_config(_raw(learning_rate=1e-4, max_steps=10), check_paths=False)
    new, _ = build_config(
        {
            **_raw(learning_rate=0.5, max_steps=40, eval_steps=5, logging_steps=2),
            "method": {"lora_rank": 16},
            "health": {"enabled": False},
        },
        check_paths=False,
    )
    assert resume_conflicts(saved, new) == ["method.lora_rank", "train.learning_rate", "train.max_steps"]
    assert resume_conflicts(saved, saved) == []


def test_resume_conflicts_eval_data_is_safe_only_without_a_split():
    saved, _ = build_config(_raw(), check_paths=False)
    new, _ = build_config({**_raw(), "data": {"train": "d.jsonl", "eval": "e.jsonl"}}, check_paths=False)
    assert resume_conflicts(saved, new) == []
    split = {"train": "d.jsonl", "val_size": 0.1}
    saved, _ = build_config({**_raw(), "data": split}, check_paths=False)
    new, _ = build_config({**_raw(), "data": {**split, "max_eval_samples": 3}}, check_paths=False)
    assert resume_conflicts(saved, new) == ["data.max_eval_samples"]  # the split may depend on it: not safe
    new, _ = build_config({**_raw(), "data": {**split, "val_size": 0.2}}, check_paths=False)
    assert resume_conflicts(saved, new) == ["data.val_size"]


def test_resume_with_changed_training_settings_is_refused(config_file, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved, _ = build_config(yaml.safe_load(config_file.read_text()))
    (run_dir / "config.yaml").write_text(dump_config(saved))
    out = run_cli("train", config_file, "--resume", "--set", "learning_rate=0.5", "--set", "lora_rank=4")
    assert_user_error(out, "method.lora_rank", "train.learning_rate", "0.5", "new output_dir", "revert")
    assert not (run_dir / "metrics.jsonl").exists()


def test_resume_with_a_safe_change_goes_on(config_file, tmp_path):
    assert run_cli("train", config_file, "--set", "max_steps=2").code == 0
    out = run_cli("train", config_file, "--resume", "--set", "max_steps=2", "--set", "logging_steps=5")
    assert out.code == 0, out.envelope
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["logging_steps"] == 5  # applied and recorded


# ---------------------------------------------------------------------------------- interrupts
def _curves(path):
    rows = [
        {"learning_rate": lr, "total_model_steps": 2, "learning_curves": {"acc": [[1, 0.5], [2, 0.6 + lr]]}}
        for lr in (0.001, 0.01, 0.1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _interrupting_advance(monkeypatch, after: int, how):
    from tunepilot.engines.replay import ReplayEngine

    original, calls = ReplayEngine.advance, {"n": 0}

    def advance(self):
        calls["n"] += 1
        if calls["n"] > after:
            how()
        return original(self)

    monkeypatch.setattr(ReplayEngine, "advance", advance)


def _ctrl_c():
    raise KeyboardInterrupt


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler raises KeyboardInterrupt here


@pytest.mark.parametrize("how", [_ctrl_c, _sigterm], ids=["ctrl-c", "sigterm"])
def test_interrupted_sweep_writes_results_and_says_how_to_resume(tmp_path, monkeypatch, how):
    spec = {
        "space": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
        "engine": {"name": "replay", "curves": str(_curves(tmp_path / "c.jsonl"))},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 5},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    _interrupting_advance(monkeypatch, after=2, how=how)  # trial 0 completes in 2 advances
    out = run_cli("sweep", path, "--dir", tmp_path / "sw")
    assert_user_error(out, "interrupted", "re-run the same command", code=3)
    assert "--resume" not in out.message
    board = json.loads((tmp_path / "sw" / "leaderboard.json").read_text())
    board = board if isinstance(board, list) else board.get("leaderboard", board)
    assert [r["number"] for r in board if r["state"] == "complete"] == [0]
    assert json.loads((tmp_path / "sw" / "best.json").read_text())["number"] == 0
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler came back


def test_sigterm_on_train_writes_an_interrupted_summary(config_file, tmp_path, monkeypatch):
    from tunepilot.cli.progress import TrainProgress
    from tunepilot.stream import TrainStep

    original = TrainProgress.on_record

    def on_record(self, record):
        original(self, record)
        if isinstance(record, TrainStep) and record.step == 2:
            _sigterm()

    monkeypatch.setattr(TrainProgress, "on_record", on_record)
    out = run_cli("train", config_file)
    assert_user_error(out, "interrupted", "--resume", code=3)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["ok"] is False and summary["steps"] == 2
    assert not (tmp_path / "run" / "run.lock").exists()
    monkeypatch.undo()
    resumed = run_cli("train", config_file, "--resume")
    assert resumed.code == 0 and resumed.envelope["steps"] == 3
