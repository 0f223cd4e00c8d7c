from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import load_config
from tunepilot.recommend import recommend, scan_data

runner = CliRunner()


def test_scan_counts_every_record_and_uses_the_tokenizer(tiny_model, shared_data):
    stats = scan_data(shared_data / "gsm8k" / "test.jsonl", tiny_model, sample=50)
    assert stats.records == 1319 and stats.sampled == 50
    assert stats.token_source == "tokenizer"
    assert 0 < stats.mean_trained_tokens < stats.mean_tokens <= stats.max_tokens


def test_every_value_has_a_reason_and_the_yaml_trains(tiny_model, shared_data, tmp_path):
    out = tmp_path / "rec.yaml"
    result = runner.invoke(
        app,
        [
            "recommend",
            "--model",
            str(tiny_model),
            "--data",
            str(shared_data / "gsm8k" / "test.jsonl"),
            "--gpu-memory",
            "24",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert set(body["config"]) == set(body["reasons"]) and all(body["reasons"].values())
    for key in (
        "learning_rate",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "num_train_epochs",
        "warmup_ratio",
        "lr_scheduler_type",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "cutoff_len",
        "quantization_bit",
        "gradient_checkpointing",
    ):
        assert key in body["config"]
    config, _ = load_config(out)  # what `tunepilot train` reads
    assert config.train.learning_rate == body["config"]["learning_rate"]
    assert config.data.cutoff_len == body["config"]["cutoff_len"]
    assert body["memory"]["fits"] is True


def test_small_gpu_moves_to_checkpointing_or_qlora(model_configs, shared_data):
    data = shared_data / "gsm8k" / "test.jsonl"
    roomy, _, _ = recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=80)
    tight, _, _ = recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=16)
    assert roomy.values["quantization_bit"] is None
    assert tight.values["quantization_bit"] == 4 and tight.memory.fits
    assert tight.values["per_device_train_batch_size"] <= roomy.values["per_device_train_batch_size"]
    eff = [r.values["per_device_train_batch_size"] * r.values["gradient_accumulation_steps"] for r in (roomy, tight)]
    assert eff[0] == eff[1]  # memory changes the layout, not the effective batch


def test_lr_follows_width_within_a_family_and_full_ft_is_10x_lower(model_configs, shared_data):
    data = shared_data / "gsm8k" / "test.jsonl"
    small, _, _ = recommend(model_configs / "Llama-3.2-1B", data)
    big, _, _ = recommend(model_configs / "Llama-3.1-70B", data)
    full, _, _ = recommend(model_configs / "Llama-3.2-1B", data, method="full")
    assert big.values["learning_rate"] < small.values["learning_rate"] / 2.5
    assert full.values["learning_rate"] == pytest.approx(small.values["learning_rate"] / 10, rel=0.01)
    assert "lora_rank" not in full.values


def test_gguf_model_is_read_from_metadata(smollm2_gguf, shared_data):
    rec, info, stats = recommend(smollm2_gguf, shared_data / "gsm8k" / "test.jsonl")
    assert info.hidden_size == 576 and stats.token_source.startswith("estimate")
    assert rec.values["learning_rate"] > 0


def test_missing_data_is_a_user_error(tiny_model, tmp_path):
    result = runner.invoke(app, ["recommend", "--model", str(tiny_model), "--data", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_recommended_yaml_runs_with_tunepilot_train(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"Add {i} and {i + 1}.", "output": str(2 * i + 1)}) for i in range(40))
        + "\n"
    )
    out = tmp_path / "rec.yaml"
    made = runner.invoke(app, ["recommend", "--model", str(tiny_model), "--data", str(data), "-o", str(out)])
    assert made.exit_code == 0, made.output
    trained = runner.invoke(
        app,
        [
            "train",
            str(out),
            "--set",
            "max_steps=2",
            "--set",
            "device=cpu",
            "--set",
            f"output_dir={tmp_path / 'run'}",
            "--json",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["steps"] == 2


def test_recommend_on_n_gpus_knows_the_sharding(model_configs, shared_data, tmp_path):
    """8B full fine-tuning cannot fit one 40 GB GPU under DDP; over 4 GPUs sharding divides the states,
    and the recommended config says so (fsdp keys, nproc) and keeps the effective batch."""
    from tunepilot.config import build_config
    from tunepilot.memory import MemoryPlan, strategy_estimates
    from tunepilot.modelinfo import read_model_info
    from tunepilot.recommend import run_config_raw

    data = shared_data / "gsm8k" / "test.jsonl"
    info = read_model_info(model_configs / "Llama-3.1-8B")
    table = strategy_estimates(info, MemoryPlan(method="full", micro_batch=1, seq_len=1024), 4, 40)
    totals = [table[k].total for k in ("ddp", "shard_grad_op", "full_shard")]
    assert totals[0] > totals[1] > totals[2]  # each strategy shards more
    assert not table["ddp"].fits and table["full_shard"].fits  # 8B full FT: ~64 GB of states alone
    one, _, _ = recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=40, method="full")
    many, _, _ = recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=40, method="full", gpus=4)
    assert many.values["nproc"] == 4 and many.values["fsdp"] in ("shard_grad_op auto_wrap", "full_shard auto_wrap")
    assert many.memory.fits and not one.memory.fits
    lora, _, _ = recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=80, gpus=4)
    assert lora.values["fsdp"] is None  # LoRA on an 8B base fits each GPU: DDP, the fastest
    batch = [
        r.values["per_device_train_batch_size"] * r.values["gradient_accumulation_steps"] * r.values.get("nproc", 1)
        for r in (lora, recommend(model_configs / "Llama-3.1-8B", data, gpu_memory_gb=80)[0])
    ]
    assert batch[0] == batch[1]
    config, _ = build_config(run_config_raw(many, model_configs / "Llama-3.1-8B", data, "full"), check_paths=False)
    assert config.train.nproc == 4 and config.parallel.resolved == "fsdp"
