"""Bad files and bad output paths: one message naming the file, exit 2, a JSON envelope, no traceback."""

from __future__ import annotations

import errno
import json

import pytest
import yaml
from cli_contract import assert_user_error, run_cli


def _curves(path, names=("acc",)):
    rows = [
        {
            "learning_rate": lr,
            "total_model_steps": 2,
            "learning_curves": {n: [[1, 0.5 + lr], [2, 0.6 + lr]] for n in names},
        }
        for lr in (0.001, 0.01, 0.1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sweep(path, curves, **extra):
    spec = {
        "space": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
        "engine": {"name": "replay", "curves": str(curves)},
        "budget": {"n_trials": 2},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def data(tmp_path):
    from tunepilot.testing import write_arithmetic_chat

    return write_arithmetic_chat(tmp_path / "train.jsonl", 8)


def _config(tmp_path, model, data, **train):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model)},
                "data": {"train": str(data)},
                "train": {"device": "cpu", "max_steps": 2, **train},
                "output": {"output_dir": str(tmp_path / "run")},
            }
        )
    )
    return path


# ---------------------------------------------------------------------------------- non-UTF-8 files
def test_config_not_utf8(not_utf8):
    path = not_utf8("run.yaml", "model: {name_or_path: m}\ndata: {train: d.jsonl}\n", bad_line=2)
    assert_user_error(run_cli("train", path), f"{path}:2", "not UTF-8")


def test_sweep_file_not_utf8(not_utf8, tmp_path):
    path = not_utf8("sweep.yaml", "space: {learning_rate: [0.1]}\n")
    assert_user_error(run_cli("sweep", path, "--dir", tmp_path / "sw"), f"{path}:1", "not UTF-8")


def test_curves_file_not_utf8(tmp_path):
    curves = _curves(tmp_path / "curves.jsonl")
    curves.write_bytes(curves.read_bytes() + b'{"learning_rate": "\xff"}\n')
    out = run_cli("sweep", _sweep(tmp_path / "sweep.yaml", curves), "--dir", tmp_path / "sw")
    assert_user_error(out, f"{curves}:4", "not UTF-8")


def test_metrics_jsonl_not_utf8(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"type": "train", "step": 1, "loss": 1.0}\n\xff\xfe\n')
    assert_user_error(run_cli("diagnose", run), "metrics.jsonl:2", "not UTF-8")


def test_model_config_json_not_utf8(tmp_path, data):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(b'{"hidden_size": 8, "name": "caf\xe9"}')
    assert_user_error(run_cli("recommend", "--model", model, "--data", data), "config.json:1", "not UTF-8")


# ---------------------------------------------------------------------------------- output paths
def test_output_dir_under_a_file(tmp_path, tiny_model, data):
    (tmp_path / "afile").write_text("x")
    config = _config(tmp_path, tiny_model, data)
    out = run_cli("train", config, "--set", f"output_dir={tmp_path / 'afile' / 'run'}")
    assert_user_error(out, "afile", "is a file")


def test_output_dir_is_a_file(tmp_path, tiny_model, data):
    (tmp_path / "afile").write_text("x")
    out = run_cli("train", _config(tmp_path, tiny_model, data), "--set", f"output_dir={tmp_path / 'afile'}")
    assert_user_error(out, "afile", "is a file, not a directory")


def test_recommend_output_is_a_directory(tmp_path, tiny_model, data):
    out = run_cli("recommend", "--model", tiny_model, "--data", data, "-o", tmp_path)
    assert_user_error(out, str(tmp_path), "is a directory")


def test_sweep_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    sweep = _sweep(tmp_path / "sweep.yaml", _curves(tmp_path / "c.jsonl"))
    assert_user_error(run_cli("sweep", sweep, "--dir", tmp_path / "afile" / "sw"), "afile/sw")


def test_unwritable_output(tmp_path, tiny_model, data, monkeypatch):
    import tunepilot.io

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tunepilot.io.tempfile, "mkstemp", denied)  # root ignores chmod: simulate the refusal
    out = run_cli("recommend", "--model", tiny_model, "--data", data, "-o", tmp_path / "rec.yaml")
    assert_user_error(out, "rec.yaml", "cannot write here")


def test_full_disk_while_writing(tmp_path, tiny_model, data, monkeypatch):
    import tunepilot.io

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tunepilot.io.os, "replace", full)
    out = run_cli("recommend", "--model", tiny_model, "--data", data, "-o", tmp_path / "rec.yaml")
    assert_user_error(out, "rec.yaml", "no space left")
    assert not list(tmp_path.glob(".rec.yaml.*"))  # the temporary file went with the failure


def test_full_disk_inside_a_library_write(tmp_path, monkeypatch):
    """torch/safetensors report a full disk as RuntimeError: the disk is checked before re-raising."""
    from collections import namedtuple

    import tunepilot.io
    from tunepilot.errors import UserError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(tunepilot.io.shutil, "disk_usage", lambda p: usage(100, 100, 0))

    def fill(tmp):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0")

    with pytest.raises(UserError, match="no space left"):
        tunepilot.io.atomic_write_dir(tmp_path / "checkpoint", fill)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- corrupt inputs
def test_corrupt_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 40 + b"PAR1")
    assert_user_error(run_cli("validate", path), str(path), "Parquet")


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00junk", b"not a gguf at all"])
def test_corrupt_gguf(tmp_path, data, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert_user_error(run_cli("recommend", "--model", path, "--data", data), str(path), "GGUF")


def test_corrupt_gguf_in_train(tmp_path, data, monkeypatch):
    monkeypatch.setenv("TUNEPILOT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00junk")
    assert_user_error(run_cli("train", _config(tmp_path, path, data)), str(path), "not a readable GGUF")


def test_empty_model_directory(tmp_path, data):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("train", _config(tmp_path, tmp_path / "empty", data)), "empty", "empty directory")


def test_damaged_adapter(tmp_path, tiny_model, data):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_bytes(b"\xff\xfe{junk")
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": {"name_or_path": str(tiny_model)}, "data": {"train": str(data)}, "train": {"device": "cpu"}}
        )
    )
    out = run_cli("evaluate", run, "--data", data, "--limit", 1)
    assert_user_error(out, "adapter", "not a readable PEFT adapter")


def test_damaged_checkpoint_on_resume(tmp_path, tiny_model, data):
    config = _config(tmp_path, tiny_model, data, save_steps=1, per_device_train_batch_size=2)
    assert run_cli("train", config).code == 0
    (tmp_path / "run" / "checkpoint" / "trainable.safetensors").write_bytes(b"junk")
    assert_user_error(run_cli("train", config, "--resume"), "checkpoint", "damaged")
