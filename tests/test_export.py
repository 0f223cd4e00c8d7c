"""`tunepilot export` on tiny random models: merge exactness, sharding, the model card, sweeps, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config
from tunepilot.errors import UserError
from tunepilot.export import export_run
from tunepilot.testing import tiny_model_dir, write_arithmetic_chat

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 1]])


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    """A real 4-step LoRA run on the tiny model (dropout 0, so base + adapter is deterministic)."""
    from tunepilot.engines.run import train

    root = tmp_path_factory.mktemp("export-run")
    train_file = write_arithmetic_chat(root / "train.jsonl", 24)
    eval_file = write_arithmetic_chat(root / "eval.jsonl", 8, seed=1)
    config, _ = build_config(
        {
            "model_name_or_path": str(tiny_model),
            "dataset": str(train_file),
            "eval_dataset": str(eval_file),
            "cutoff_len": 48,
            "max_steps": 4,
            "eval_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 2e-2,
            "lora_rank": 4,
            "lora_dropout": 0.0,
            "output_dir": str(root / "run"),
            "system": "You add numbers.",
        }
    )
    train(config)
    return root / "run"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def cli(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["export", *map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_merged_model_logits_equal_base_plus_adapter_and_are_sharded(trained_run, tiny_model, tmp_path):
    out = tmp_path / "merged"
    code, data = cli(trained_run, "-o", out, "--max-shard-size", "60KB")
    assert code == 0, data
    assert data["ok"] and data["kind"] == "merged" and data["base_model"] == str(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, str(trained_run / "adapter")))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(logits(merged), expected, atol=1e-5)
    plain = logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter changed the model
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not any("lora" in k for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
        messages, tokenize=False
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == original.eos_token_id
    assert not list(tmp_path.glob(".merged*"))  # the temporary directory was renamed into place


def test_model_card_names_base_data_every_hyperparameter_results_health_and_version(trained_run, tiny_model, tmp_path):
    from tunepilot import __version__

    export_run(trained_run, tmp_path / "out", adapter_only=True)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f'base_model: "{tiny_model}"' in card and "library_name: peft" in card
    assert "LoRA: rank 4, alpha 8" in card
    assert "| train | `" in card and "train.jsonl` | 24 |" in card  # file and record count
    config = build_config({"model_name_or_path": "m", "dataset": "d"}, check_paths=False)[0].model_dump()
    for section, values in config.items():
        for key in values:
            assert f"| {section}.{key} |" in card, f"{section}.{key} missing from the card"
    assert "| train.learning_rate | `0.02` |" in card
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"best eval loss: {summary['best_eval_loss']:.4f}" in card
    assert "`tunepilot diagnose` verdict: **" in card
    assert f"tunepilot {__version__}" in card


def test_adapter_only_writes_a_peft_adapter_that_loads_on_the_base(trained_run, tiny_model, tmp_path):
    out = tmp_path / "adapter"
    code, data = cli(trained_run, "-o", out, "--adapter-only")
    assert code == 0 and data["kind"] == "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(data["files"])
    assert not list(out.glob("model*.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), str(trained_run / "adapter")
    )
    assert torch.allclose(logits(PeftModel.from_pretrained(base, str(out))), logits(reference), atol=1e-6)


def test_a_base_model_that_does_not_match_the_adapter_is_refused_with_exit_2(trained_run, tmp_path):
    other = tiny_model_dir(tmp_path / "wider", hidden=64)
    for extra in ([], ["--adapter-only"]):
        code, data = cli(trained_run, "-o", tmp_path / "out", "--base", other, *extra)
        assert code == 2, data
        assert "does not fit the base model" in data["error"]["message"] and "--base" in data["error"]["message"]
        assert any("64" in p for p in data["error"]["problems"])
        assert not (tmp_path / "out").exists()


def make_sweep(run_dir: Path, root: Path, best: int = 1) -> Path:
    sweep = root / "sweep"
    for number in (0, 1):
        shutil.copytree(run_dir, sweep / "trials" / f"{number:04d}")
    (sweep / "trials" / "0002").mkdir()  # a pruned trial without an adapter
    (sweep / "trials" / "0002" / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (sweep / "best.json").write_text(json.dumps({"number": best, "value": 1.0, "params": {}}))
    return sweep


def test_export_from_a_sweep_takes_the_best_or_the_named_trial(trained_run, tmp_path):
    sweep = make_sweep(trained_run, tmp_path)
    code, data = cli(sweep, "-o", tmp_path / "best", "--adapter-only")
    assert code == 0 and data["trial"] == 1 and data["run_dir"].endswith("trials/0001")
    assert json.loads((tmp_path / "best" / "export.json").read_text())["trial"] == 1
    assert "trial 1 of the sweep" in (tmp_path / "best" / "README.md").read_text()
    code, data = cli(sweep, "-o", tmp_path / "zero", "--trial", "0", "--adapter-only")
    assert code == 0 and data["trial"] == 0
    code, data = cli(sweep, "-o", tmp_path / "nine", "--trial", "9")
    assert code == 2 and "trials with a directory: 0, 1, 2" in data["error"]["message"]
    code, data = cli(sweep, "-o", tmp_path / "two", "--trial", "2")
    assert code == 2 and "no adapter/" in data["error"]["message"]
    code, data = cli(trained_run, "-o", tmp_path / "x", "--trial", "best")
    assert code == 2 and "not a sweep directory" in data["error"]["message"]


def test_too_little_free_disk_is_refused_before_writing(trained_run, tmp_path):
    with pytest.raises(UserError) as e:
        export_run(trained_run, tmp_path / "out", disk_free=lambda path: 1000)
    assert "needs about" in str(e.value) and "free" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_leaves_no_output_that_looks_complete(trained_run, tmp_path):
    def interrupt(message: str) -> None:
        if message.startswith("writing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_run(trained_run, tmp_path / "out", log=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_needs_force(trained_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, data = cli(trained_run, "-o", out, "--adapter-only")
    assert code == 2 and "--force" in data["error"]["message"] and (out / "keep.txt").exists()
    code, _ = cli(trained_run, "-o", out, "--adapter-only", "--force")
    assert code == 0 and not (out / "keep.txt").exists()


def test_gguf_without_a_converter_says_what_to_install(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPILOT_GGUF_CONVERTER", str(tmp_path / "missing" / "convert_hf_to_gguf.py"))
    code, data = cli(trained_run, "-o", tmp_path / "out", "--gguf", "f16")
    assert code == 2 and "TUNEPILOT_GGUF_CONVERTER" in data["error"]["message"]
    code, data = cli(trained_run, "-o", tmp_path / "out", "--gguf", "q9_z")
    assert code == 2 and "not a GGUF type" in data["error"]["message"]
    assert not (tmp_path / "out").exists()


def test_a_moved_base_is_named_and_merges_with_base(trained_run, tiny_model, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(tiny_model), str(tmp_path / "moved-away")))
    code, data = cli(run, "-o", tmp_path / "out")
    assert code == 2 and "moved-away" in data["error"]["message"] and "--base" in data["error"]["message"]
    code, data = cli(run, "-o", tmp_path / "out", "--base", tiny_model)
    assert code == 0 and data["base_model"] == str(tiny_model)
