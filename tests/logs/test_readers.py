"""Readers on real public logs and on the messy cases real logs have."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunepilot.errors import ExitCode, UserError
from tunepilot.logs import READERS, read_log
from tunepilot.logs.siblings import params_from_name
from tunepilot.logs.values import to_float, to_seconds
from tunepilot.stream import EvalPoint, Event, MetricsWriter, TrainStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def write_state(path: Path, history: list, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"global_step": 0, "log_history": history, **extra}))
    return path


def test_real_llamafactory_log_with_its_config_files():
    log = read_log(FIXTURES / "lf_qwen25_7b_medical_qlora")
    assert log.source == "llamafactory" and log.path.name == "trainer_log.jsonl"
    assert (len(log.train_steps), len(log.eval_points), log.planned_steps) == (135, 13, 6750)
    assert log.eval_points[0].step == 500 and log.eval_points[0].eval_loss == pytest.approx(1.64106, abs=1e-5)
    assert any(r.step == 500 for r in log.train_steps)  # the eval line repeats a train step: both kept
    assert (log.method, log.learning_rate, log.lora_rank, log.lora_alpha) == ("lora", 1e-4, 8, 16)
    assert log.num_params == 7_000_000_000 and log.config["warmup_ratio"] == 0.1
    assert log.extra["final_eval_loss"] == pytest.approx(1.57776, abs=1e-5)
    assert log.train_steps[0].lr == pytest.approx(7.259e-06, rel=1e-3)


def test_real_hf_trainer_state():
    log = read_log(FIXTURES / "hf_distilbert_imdb_lora" / "trainer_state.json")
    assert log.source == "hf_trainer_state" and log.planned_steps == 375
    assert [e.step for e in log.eval_points] == [125, 250, 375]
    assert log.train_steps[2].grad_norm == pytest.approx(2.603, abs=1e-3) and log.train_steps[2].lr > 0
    assert log.config["logging_steps"] == 20


def test_real_multi_process_log_writes_every_line_twice():
    log = read_log(FIXTURES / "lf_duplicated_lines_cutoff")
    assert [r.step for r in log.train_steps] == list(range(10, 101, 10))
    assert log.train_steps[0].loss == 0.8547  # the last copy wins
    assert log.train_steps[0].seconds == 133.0  # "0:02:13"
    assert any("repeated" in n for n in log.notes)


def test_real_old_llamafactory_lines_with_learning_rate_and_string_numbers():
    log = read_log(FIXTURES / "lf_mistral_translator_cutoff" / "trainer_log.jsonl")
    assert len(log.train_steps) == 20 and log.train_steps[0].lr == pytest.approx(5.7737e-07, rel=1e-4)
    assert log.train_steps[0].tokens is None  # "total_tokens": 0 means "not counted"


def test_real_run_that_logged_no_loss_in_either_format():
    for name in ("trainer_state.json", "trainer_log.jsonl"):
        log = read_log(FIXTURES / "lf_qwen3_14b_no_points" / name)
        assert log.train_steps == [] and log.method == "lora" and log.learning_rate == 5e-05


def test_crlf_bom_string_numbers_missing_steps_and_nan_in_llamafactory_lines(tmp_path):
    lines = [
        '{"current_steps": 1, "total_steps": 10, "loss": "2.5", "learning_rate": "1e-4"}',
        '{"total_steps": 10, "loss": 2.25, "lr": 1e-4, "percentage": 20.0}',  # no step: from percentage
        '{"loss": 2.0, "lr": 1e-4}',  # no step, no percentage: after the previous
        '{"current_steps": 4, "total_steps": 10, "loss": "NaN", "lr": 1e-4}',
        '{"current_steps": 4, "total_steps": 10, "eval_loss": "2.1", "eval_accuracy": 0.5}',
    ]
    path = tmp_path / "trainer_log.jsonl"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    log = read_log(path)
    assert [(r.step, r.loss) for r in log.train_steps[:3]] == [(1, 2.5), (2, 2.25), (3, 2.0)]
    assert math.isnan(log.train_steps[3].loss) and log.train_steps[0].lr == 1e-4
    [evaluation] = log.eval_points
    assert (evaluation.step, evaluation.eval_loss, evaluation.metrics) == (4, 2.1, {"accuracy": 0.5})


def test_a_cut_off_last_line_is_ignored_with_a_note(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text('{"current_steps": 1, "loss": 2.0}\n{"current_steps": 2, "loss": 1.9}\n{"current_st')
    log = read_log(path)
    assert len(log.train_steps) == 2 and "cut off" in log.notes[0]


def test_hf_entries_without_step_lr_alias_best_metric_accuracy_and_summary(tmp_path):
    history = [
        {"loss": 2.0, "learning_rate": 1e-4, "step": 10},
        {"loss": "1.8", "lr": 1e-4},  # no step: logging_steps after the previous one
        {"eval_loss": 1.9, "eval_accuracy": 0.71, "eval_runtime": 3.2, "step": 20},
        {"loss": 1.7, "grad_norm": "Infinity", "step": 30},
        {"train_loss": 1.8, "train_runtime": 100.0, "step": 30},
    ]
    path = write_state(tmp_path / "trainer_state.json", history, logging_steps=10, best_metric=0.71, max_steps=30)
    log = read_log(path)
    assert [(r.step, r.loss) for r in log.train_steps] == [(10, 2.0), (20, 1.8), (30, 1.7)]
    assert log.train_steps[1].lr == 1e-4 and log.train_steps[2].grad_norm == math.inf
    [evaluation] = log.eval_points
    assert evaluation.eval_loss == 1.9 and evaluation.metrics == {"accuracy": 0.71}  # runtime dropped
    assert log.extra["best_metric"] == 0.71 and log.extra["final_train_loss"] == 1.8
    assert "without 'step'" in log.notes[0]


def test_hf_prediction_only_log_has_no_training_data(tmp_path):
    history = [{"eval_wer": 31.2, "eval_runtime": 50.0, "step": 0}, {"predict_wer": 30.9, "step": 0}]
    log = read_log(write_state(tmp_path / "trainer_state.json", history))
    assert log.train_steps == [] and log.eval_points[0].eval_loss is None
    assert log.eval_points[0].metrics == {"wer": 31.2}


def test_directory_of_checkpoints_reads_the_newest(tmp_path):
    for step in (100, 1000, 200):  # 1000 > 200 as numbers, not as strings
        write_state(
            tmp_path / f"checkpoint-{step}" / "trainer_state.json",
            [{"loss": 1.0, "step": s} for s in range(10, step + 1, 10)],
        )
    log = read_log(tmp_path)
    assert log.path.parent.name == "checkpoint-1000" and log.train_steps[-1].step == 1000


def test_run_directory_prefers_its_own_trainer_state(tmp_path):
    write_state(tmp_path / "trainer_state.json", [{"loss": 1.0, "step": 5}])
    write_state(tmp_path / "checkpoint-4" / "trainer_state.json", [{"loss": 1.0, "step": 4}])
    assert read_log(tmp_path).path == tmp_path / "trainer_state.json"


def test_tunepilot_metrics_stream_with_summary_and_config(tmp_path):
    with MetricsWriter(tmp_path / "metrics.jsonl") as writer:
        for record in (
            TrainStep(1, 2.0, lr=1e-4),
            TrainStep(2, float("nan")),
            EvalPoint(2, 1.9),
            Event(2, "health.stop", "stopped"),
        ):
            writer.write(record)
    (tmp_path / "summary.json").write_text(json.dumps({"planned_steps": 50, "parameters": {"total": 135e6}}))
    (tmp_path / "config.yaml").write_text("method:\n  finetuning_type: full\ntrain:\n  learning_rate: 1.0e-05\n")
    log = read_log(tmp_path)
    assert log.source == "tunepilot" and log.planned_steps == 50 and log.num_params == 135_000_000
    assert (log.method, log.learning_rate) == ("full", 1e-05)
    assert math.isnan(log.train_steps[1].loss) and len(log.records) == 4


@pytest.mark.parametrize(
    ("content", "name"),
    [
        ("this is not a log", "notes.txt"),
        ('{"some": "json"}', "config.json"),
        ("", "empty.jsonl"),
    ],
)
def test_unreadable_input_is_a_usage_error_naming_the_file(tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as e:
        read_log(path)
    assert e.value.code == ExitCode.USAGE and str(path) in e.value.message and "expected" in e.value.message


def test_broken_trainer_state_names_the_file_and_line(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history": [{"loss": 1.0,\n')
    with pytest.raises(UserError, match="trainer_state.json:2"):
        read_log(path)


def test_garbage_lines_in_a_llamafactory_log_are_an_error(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text('not json\nnot json either\n{"loss": 1}\n')
    with pytest.raises(UserError, match="trainer_log.jsonl:1"):
        read_log(path)


def test_empty_directory_and_missing_path(tmp_path):
    with pytest.raises(UserError, match="not a log"):
        read_log(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        read_log(tmp_path / "missing")


def test_forcing_a_format():
    log = read_log(FIXTURES / "lf_qwen3_14b_no_points", fmt="llamafactory")
    assert log.source == "llamafactory"
    with pytest.raises(UserError, match="unknown log format"):
        read_log(FIXTURES / "lf_qwen3_14b_no_points", fmt="wandb")
    assert list(READERS) == ["tunepilot", "hf_trainer_state", "llamafactory"]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", 7e9),
        ("./Qwen2.5-0.5B", 0.5e9),
        ("SmolLM2-135M-Instruct", 135e6),
        ("/dev/shm/Qwen/Qwen3-14B", 14e9),
        ("mistralai/Mixtral-8x7B-v0.1", 56e9),
        ("gpt2", None),
    ],
)
def test_model_size_from_its_name(name, params):
    assert params_from_name(name) == (int(params) if params else None)


def test_tolerant_values():
    assert [to_float(v) for v in ("1e-4", " 2 ", "NaN", "-inf", "abc", True, None)][:2] == [1e-4, 2.0]
    assert math.isnan(to_float("NaN")) and to_float("-inf") == -math.inf
    assert to_float("abc") is None and to_float(True) is None
    assert to_seconds("1 day, 2:03:04") == 93784 and to_seconds("0:00:24") == 24 and to_seconds("x") is None
