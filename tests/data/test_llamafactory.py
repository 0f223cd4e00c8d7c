"""LLaMA-Factory projects as they are: dataset_info.json datasets (alpaca + sharegpt, columns, tags),
eval_dataset / val_size, template names, config-relative paths; `validate DIR` reads the same folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import load_config
from tunepilot.data import load_conversations, prepare_datasets
from tunepilot.errors import ExitCode, UserError

ALPACA = [{"q": f"What is {i} + 1?", "ctx": "" if i % 2 else "Be brief.", "a": f"{i + 1}."} for i in range(6)]
SHAREGPT = [
    {"dialog": [{"speaker": "client", "text": f"Say {w}."}, {"speaker": "bot", "text": w}]}
    for w in ("yes", "no", "maybe", "later")
]
INFO = {
    "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
    "chat": {
        "file_name": "chat.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "bot"},
    },
    "hub_only": {"hf_hub_url": "someone/data"},
}


@pytest.fixture
def project(tmp_path, tiny_model) -> Path:
    """A LLaMA-Factory project: data/dataset_info.json, two datasets, an SFT YAML with template qwen."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "qa.json").write_text(json.dumps(ALPACA))
    (root / "data" / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT))
    (root / "data" / "dataset_info.json").write_text(json.dumps(INFO))
    sft = {
        "model_name_or_path": str(tiny_model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "qa,chat",
        "dataset_dir": "data",
        "template": "qwen",
        "cutoff_len": 128,
        "val_size": 0.2,
        "output_dir": "saves/run",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "plot_loss": True,
        "report_to": "none",
    }
    (root / "sft.yaml").write_text(yaml.safe_dump(sft))
    return root


@pytest.fixture
def elsewhere(tmp_path):
    """Run from a directory that is not the project's."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    cwd = os.getcwd()
    os.chdir(other)
    yield other
    os.chdir(cwd)


def test_named_datasets_read_with_their_own_format_columns_and_tags(project, elsewhere):
    config, _ = load_config(project / "sft.yaml")
    assert config.data.dataset_dir == str((project / "data").resolve())
    assert config.data.template == "qwen" and config.data.train == "qa,chat"
    convs = load_conversations(config.data.model_copy(update={"val_size": 0.0}), "train")
    assert len(convs) == len(ALPACA) + len(SHAREGPT)
    first, chat = convs[0].messages, convs[len(ALPACA)].messages
    assert first == [{"role": "user", "content": "What is 0 + 1?\nBe brief."}, {"role": "assistant", "content": "1."}]
    assert chat == [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]


def test_qwen_template_trains_with_qwens_default_system_and_chatml_masking(project, elsewhere):
    from tunepilot.models import load_tokenizer

    config, _ = load_config(project / "sft.yaml")
    tok = load_tokenizer(config.model)
    data = prepare_datasets(config.data, tok, seed=0)
    assert len(data.train) + len(data.eval) == len(ALPACA) + len(SHAREGPT) and data.eval  # val_size split
    text = tok.decode(data.train[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    trained = tok.decode([t for t in data.train[0]["labels"] if t != -100])
    assert trained.endswith("<|im_end|>") and "user" not in trained


def test_llamafactory_project_trains_unchanged_from_another_directory(project, elsewhere):
    result = CliRunner().invoke(app, ["train", str(project / "sft.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert env["steps"] == 2 and env["data"]["train"]["records"] == 8
    assert any("plot_loss" in w for w in env["warnings"])
    assert (elsewhere / "saves" / "run" / "adapter").is_dir()  # output_dir stays relative to where you run


def test_eval_dataset_by_name(project, elsewhere):
    raw = yaml.safe_load((project / "sft.yaml").read_text())
    raw.update({"dataset": "qa", "eval_dataset": "chat", "val_size": 0.0})
    (project / "sft.yaml").write_text(yaml.safe_dump(raw))
    config, _ = load_config(project / "sft.yaml")
    assert len(load_conversations(config.data, "eval")) == len(SHAREGPT)


def test_unknown_name_hub_entries_and_template_are_reported_together(project, elsewhere):
    raw = yaml.safe_load((project / "sft.yaml").read_text())
    raw.update({"dataset": "qa,nope", "template": "glm4"})
    (project / "sft.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        load_config(project / "sft.yaml")
    joined = "\n".join(e.value.problems)
    assert "data.train: 'nope'" in joined and "dataset_info.json" in joined
    assert "data.template" in joined and "glm4" in joined
    raw.update({"dataset": "hub_only", "template": "qwen"})
    (project / "sft.yaml").write_text(yaml.safe_dump(raw))
    config, _ = load_config(project / "sft.yaml")
    with pytest.raises(UserError, match="hf_hub_url datasets are not downloaded"):
        load_conversations(config.data, "train")


def test_validate_reads_a_llamafactory_folder(project, tiny_model):
    result = CliRunner().invoke(
        app, ["validate", str(project / "data"), "--model", str(tiny_model), "--template", "qwen", "--json"]
    )
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert env["stats"]["train"]["records"] == len(ALPACA) + len(SHAREGPT)


def test_a_llamafactory_folder_as_a_data_path_says_what_to_do(project):
    from tunepilot.data.readers import resolve_files

    with pytest.raises(UserError, match="LLaMA-Factory dataset folder"):
        resolve_files(project / "data")


def test_relative_paths_resolve_next_to_the_config_then_the_working_dir(tmp_path, elsewhere):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    (sub / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (elsewhere / "here.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    cfg = sub / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "train.jsonl", "eval_dataset": "here.jsonl"}))
    config, _ = load_config(cfg)
    assert config.data.train == str(sub / "train.jsonl") and config.data.eval == str(elsewhere / "here.jsonl")
    cfg.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "missing.jsonl"}))
    with pytest.raises(UserError) as e:
        load_config(cfg)
    assert e.value.code == ExitCode.USAGE
    (p,) = e.value.problems
    assert "does not exist" in p and str(sub) in p and str(elsewhere) in p


def test_a_wrong_template_is_refused_before_training(tmp_path, tiny_model):
    """llama3's markers are plain text to a ChatML tokenizer: validate warns, train refuses (exit 2)."""
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    cfg = tmp_path / "c.yaml"
    raw = {
        "model_name_or_path": str(tiny_model),
        "dataset": str(data),
        "template": "llama3",
        "max_steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
    cfg.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == ExitCode.USAGE
    assert "template_tokens_not_special" in result.output and "allow_template_mismatch" in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    cfg.write_text(yaml.safe_dump({**raw, "allow_template_mismatch": True}))
    assert CliRunner().invoke(app, ["train", str(cfg)]).exit_code == 0


def test_real_gsm8k_through_a_dataset_info_entry(tmp_path, shared_data):
    """A dataset_info.json whose file_name points at the shared GSM8K file (read in place)."""
    info = {
        "gsm8k": {
            "file_name": str(shared_data / "gsm8k" / "train.jsonl"),
            "columns": {"prompt": "question", "response": "answer"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"model_name_or_path": "m", "dataset": "gsm8k", "dataset_dir": ".", "max_samples": 50})
    )
    config, _ = load_config(cfg)
    convs = load_conversations(config.data, "train")
    assert len(convs) == 50 and "####" in convs[0].messages[-1]["content"]


def test_shipped_examples_load_from_any_directory(elsewhere, shared_data):
    root = Path(__file__).resolve().parents[2] / "examples"
    config, warnings = load_config(root / "llamafactory_qwen_lora_sft.yaml")
    assert config.data.dataset_dir == str(root / "llamafactory_data") and config.data.template == "qwen"
    assert config.train.lr_scheduler_type == "cosine_with_min_lr" and config.method.neftune_noise_alpha == 5
    assert len(load_conversations(config.data.model_copy(update={"val_size": 0.0}), "train")) == 200 + 4
    for name in ("quickstart.yaml", "llamafactory_llama3_lora_sft.yaml"):
        config, _ = load_config(root / name)  # data paths checked: they resolve next to the file
        assert Path(config.data.train) == shared_data / "gsm8k" / "train.jsonl"
