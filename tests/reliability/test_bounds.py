"""Unbounded work and wrong values from small mistakes: refused up front with the key, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_contract import assert_user_error, run_cli

from tunepilot.config import MAX_YAML_NODES, read_yaml


@pytest.fixture
def data(tmp_path):
    from tunepilot.testing import write_arithmetic_chat

    return write_arithmetic_chat(tmp_path / "train.jsonl", 8)


def _config(tmp_path, data, text: str = ""):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {{name_or_path: m}}\ndata: {{train: {data}}}\n{text}")
    return path


def _curves(path):
    rows = [
        {
            "learning_rate": lr,
            "total_model_steps": 2,
            "learning_curves": {"acc": [[1, 0.5], [2, 0.6 + lr]], "f1": [[1, 0.4], [2, 0.5]]},
        }
        for lr in (0.001, 0.01, 0.1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sweep(tmp_path, **extra):
    spec = {
        "space": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
        "engine": {"name": "replay", "curves": str(_curves(tmp_path / "curves.jsonl"))},
        "budget": {"n_trials": 2},
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---------------------------------------------------------------------------------- YAML
def test_duplicate_key_names_the_key_and_both_lines(tmp_path, data):
    path = _config(tmp_path, data, "train:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n")
    assert_user_error(run_cli("train", path), f"{path}:5", "duplicate key 'learning_rate'", "line 4")


def test_duplicate_section(tmp_path, data):
    path = _config(tmp_path, data, "train: {max_steps: 3}\ntrain: {max_steps: 4}\n")
    assert_user_error(run_cli("train", path), "duplicate key 'train'")


def test_merge_keys_may_override():
    """`<<: *base` then an explicit key is YAML's way to override, not a duplicate."""
    from tunepilot.config import yaml_load

    assert yaml_load("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")["b"] == {"x": 3, "y": 2}


def test_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    out = run_cli("train", path)
    assert_user_error(out, "bomb.yaml", "alias")
    assert len(out.message) < 500
    assert str(MAX_YAML_NODES) in out.message


def test_a_few_aliases_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {learning_rate: 1.0e-4}\nother: *b\nthird: *b\n")
    assert read_yaml(path)["third"] == {"learning_rate": 1.0e-4}


def test_recursive_alias(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [1, *a]\n")
    assert_user_error(run_cli("train", path), "loop.yaml", "recursive")


# ---------------------------------------------------------------------------------- absurd values
@pytest.mark.parametrize(
    "setting, key",
    [
        ("max_steps: 1.0e12", "train.max_steps"),
        ("max_steps: 1e12", "train.max_steps"),  # PyYAML reads this as the string '1e12'
        ("num_train_epochs: 1.0e30", "train.num_train_epochs"),
        ("learning_rate: .inf", "train.learning_rate"),
        ("learning_rate: .nan", "train.learning_rate"),
        ("warmup_steps: 1.0e15", "train.warmup_steps"),
        ("weight_decay: .inf", "train.weight_decay"),
        ("max_steps: -5", "train.max_steps"),
    ],
)
def test_absurd_train_values(tmp_path, data, setting, key):
    out = run_cli("train", _config(tmp_path, data, f"train: {{{setting}}}\n"))
    assert_user_error(out, key)


def test_lr_find_steps_bound(tmp_path, data):
    out = run_cli("lr-find", _config(tmp_path, data), "--steps", 1_000_000_000)
    assert_user_error(out, "--steps 1000000000")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_recommend_gpu_memory(tmp_path, tiny_model, data, value):
    out = run_cli("recommend", "--model", tiny_model, "--data", data, "--gpu-memory", value)
    assert_user_error(out, "--gpu-memory")


# ---------------------------------------------------------------------------------- sweep files
def test_engine_written_as_a_list(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("space: {learning_rate: {low: 1.0e-5, high: 1.0e-3}}\nengine: [replay]\n")
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "engine", "sweep.yaml")


@pytest.mark.parametrize("slots", ["four", 0, -1, 1.5])
def test_bad_slots(tmp_path, slots):
    path = _sweep(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["engine"]["slots"] = slots
    path.write_text(yaml.safe_dump(spec))
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "engine.slots")


def test_n_trials_zero(tmp_path):
    out = run_cli("sweep", _sweep(tmp_path), "--dir", tmp_path / "sw", "--n-trials", 0)
    assert_user_error(out, "--n-trials")
    assert not (tmp_path / "sw").exists()  # refused before anything was created


def test_enqueued_trial_outside_the_range(tmp_path):
    path = _sweep(tmp_path, enqueue=[{"learning_rate": 0.5}])
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "enqueue.0.learning_rate", "outside")


def test_enqueued_trial_outside_the_choices(tmp_path):
    path = _sweep(tmp_path, enqueue=[{"learning_rate": 0.5}])
    spec = yaml.safe_load(path.read_text())
    spec["space"]["learning_rate"] = [0.001, 0.01]
    path.write_text(yaml.safe_dump(spec))
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "enqueue.0.learning_rate")


def test_enqueued_trial_inside_the_range_runs(tmp_path):
    out = run_cli("sweep", _sweep(tmp_path, enqueue=[{"learning_rate": 0.01}]), "--dir", tmp_path / "sw")
    assert out.code == 0, out.envelope
    assert any(r["params"] == {"learning_rate": 0.01} for r in out.envelope["leaderboard"])


@pytest.mark.parametrize("dist", [{"low": 0, "high": 100}, [0, 50, 100], {"low": -10, "high": 10}])
def test_max_steps_range_below_one(tmp_path, dist):
    path = _sweep(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["space"]["max_steps"] = dist
    path.write_text(yaml.safe_dump(spec))
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "space.max_steps")


def test_unknown_objective_metric_on_replay_lists_the_curves(tmp_path):
    path = _sweep(tmp_path, objective={"metric": "accuracy", "direction": "maximize"})
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), "objective.metric", "acc, f1")


def test_objective_metric_picks_the_curve_it_names(tmp_path):
    """`metric: f1` replays the f1 curve (its final values are 0.5), not the file's first curve."""
    out = run_cli(
        "sweep", _sweep(tmp_path, objective={"metric": "f1", "direction": "maximize"}), "--dir", tmp_path / "sw"
    )
    assert out.code == 0, out.envelope
    assert {r["value"] for r in out.envelope["leaderboard"] if r["state"] == "complete"} == {0.5}


# ---------------------------------------------------------------------------------- records
def test_huge_record_is_a_finding_not_a_memory_blowup(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPILOT_MAX_RECORD_BYTES", "4096")
    path = tmp_path / "data.jsonl"
    big = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 100_000}]}
    small = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(small) + "\n" + json.dumps(big) + "\n" + json.dumps(small) + "\n")
    out = run_cli("validate", path)
    assert out.exception is None and out.code == 1
    hits = [f for f in out.envelope["findings"] if f["code"] == "record_too_large"]
    assert [(f["line"], f["severity"]) for f in hits] == [(2, "error")]
    assert "4096 bytes" in hits[0]["message"]


def test_record_cap_reads_past_the_long_line_in_chunks(tmp_path, monkeypatch):
    from tunepilot.data.jsonl import read_jsonl

    monkeypatch.setenv("TUNEPILOT_MAX_RECORD_BYTES", "2000")
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n' + '{"a": "' + "y" * (3 << 20) + '"}\n' + '{"a": 3}\n')
    records = list(read_jsonl(path))
    assert [(r.line, r.value) for r in records] == [(1, {"a": 1}), (2, None), (3, {"a": 3})]
    assert records[1].code == "record_too_large" and records[0].error is None
