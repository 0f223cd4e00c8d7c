"""DeepSpeed and FSDP settings as LLaMA-Factory, Axolotl and accelerate write them: read, mapped, checked."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config
from tunepilot.errors import UserError
from tunepilot.parallel import deepspeed_config, zero_stage

# the shape of LLaMA-Factory's examples/deepspeed/ds_z3_config.json: HF's "auto" values throughout
ZERO3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": False,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}


def _llamafactory_yaml(tmp_path, tiny_model, **keys) -> dict:
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "2+2?", "input": "", "output": "4"}\n')
    return {
        "model_name_or_path": str(tiny_model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": str(data),
        "template": "chatml",
        "cutoff_len": 64,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "learning_rate": 1e-4,
        "bf16": True,
        "output_dir": str(tmp_path / "out"),
        **keys,
    }


def test_a_llamafactory_zero3_config_loads_and_its_auto_values_are_filled(tmp_path, tiny_model):
    ds = tmp_path / "ds_z3_config.json"
    ds.write_text(json.dumps(ZERO3))
    config, _ = build_config(_llamafactory_yaml(tmp_path, tiny_model, deepspeed=str(ds)), check_paths=False)
    assert config.parallel.resolved == "deepspeed"
    filled = deepspeed_config(ds, config, world=4, total_steps=100, warmup_steps=3, hidden_size=64)
    assert filled["train_micro_batch_size_per_gpu"] == 2 and filled["gradient_accumulation_steps"] == 1
    assert filled["train_batch_size"] == 8  # 2 x 4 planned for one process = 2 x 1 x 4 GPUs: the same batch
    assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False
    assert filled["gradient_clipping"] == config.train.max_grad_norm
    assert filled["zero_optimization"]["reduce_bucket_size"] == 64 * 64 and zero_stage(filled) == 3
    assert "auto" not in json.dumps(filled)


def test_deepspeed_values_that_cannot_be_filled_or_read_are_named(tmp_path, tiny_model):
    config, _ = build_config(_llamafactory_yaml(tmp_path, tiny_model), check_paths=False)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**ZERO3, "optimizer": {"type": "AdamW", "params": {"momentum": "auto"}}}))
    with pytest.raises(UserError) as e:
        deepspeed_config(odd, config, world=2, total_steps=10, warmup_steps=0)
    assert "optimizer.params.momentum" in str(e.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{stage: 3")
    with pytest.raises(UserError, match="broken.json is not a JSON file"):
        deepspeed_config(broken, config, world=2, total_steps=10, warmup_steps=0)
    bad_stage = tmp_path / "stage.json"
    bad_stage.write_text(json.dumps({"zero_optimization": {"stage": 4}}))
    with pytest.raises(UserError, match="zero_optimization.stage: 4"):
        deepspeed_config(bad_stage, config, world=2, total_steps=10, warmup_steps=0)


def test_deepspeed_is_refused_up_front_where_it_cannot_run(tmp_path, tiny_model):
    ds = tmp_path / "ds_z3_config.json"
    ds.write_text(json.dumps(ZERO3))
    path = tmp_path / "lf.yaml"
    path.write_text(
        yaml.safe_dump(_llamafactory_yaml(tmp_path, tiny_model, deepspeed=str(ds), bf16=False, device="cpu"))
    )
    result = CliRunner().invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 2, result.output
    body = json.loads(result.stdout[result.stdout.index("{") :])
    assert "DeepSpeed ZeRO needs CUDA GPUs" in json.dumps(body) and "fsdp" in json.dumps(body)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_axolotl_fsdp_config_maps_and_bad_values_name_their_key_path(tmp_path, tiny_model):
    axolotl = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "sharded_state_dict",
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_reshard_after_forward": True,
        },
    }
    config, _ = build_config(_llamafactory_yaml(tmp_path, tiny_model, **axolotl), check_paths=False)
    fsdp = config.parallel.fsdp_config
    assert config.parallel.resolved == "fsdp" and fsdp.transformer_layer_cls_to_wrap == ["LlamaDecoderLayer"]
    assert fsdp.state_dict_type == "SHARDED_STATE_DICT" and fsdp.version == 2
    bad = {"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 1, "fsdp_offload_params": "sometimes"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_llamafactory_yaml(tmp_path, tiny_model, **bad)))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "parallel.fsdp_config.version" in result.output and "parallel.fsdp_config.offload_params" in result.output
    assert "Traceback" not in result.output


def test_a_written_config_keeps_its_strategy(tmp_path):
    """A DDP config written out and read back (run dir, transfer, sweep trials) stays DDP: `strategy:
    auto` reads the fsdp keys a user wrote, and a dump writes every key."""
    from tunepilot.config import build_config, config_with, dump_config, load_config, resume_conflicts

    ddp = build_config({"model_name_or_path": "m", "dataset": "d.jsonl", "nproc": 2}, check_paths=False)[0]
    fsdp = config_with(ddp, {"fsdp": "full_shard auto_wrap"})
    for config, strategy in ((ddp, "ddp"), (fsdp, "fsdp")):
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(dump_config(config))
        again = load_config(path, check_paths=False)[0]
        assert again.parallel.resolved == config_with(config, {}).parallel.resolved == strategy
        assert resume_conflicts(again, config) == []
