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


def test_an_axolotl_zero_config_with_offload_is_filled(tmp_path, tiny_model):
    """Axolotl's zero3_bf16.json names the ZeRO-3 sizes without `stage3_`; its zero2.json offloads the
    optimizer to the CPU, where the run's own (client) optimizer must be allowed to step."""
    zero = {"stage": 3, "prefetch_bucket_size": "auto", "param_persistence_threshold": "auto"}
    zero |= {"reduce_bucket_size": "auto", "offload_optimizer": {"device": "cpu"}}
    ds = tmp_path / "zero3_bf16.json"
    ds.write_text(json.dumps({"zero_optimization": zero, "bf16": {"enabled": True}, "gradient_clipping": "auto"}))
    config, _ = build_config(_llamafactory_yaml(tmp_path, tiny_model, deepspeed=str(ds)), check_paths=False)
    filled = deepspeed_config(ds, config, world=2, total_steps=10, warmup_steps=1, hidden_size=32)
    assert filled["zero_optimization"]["prefetch_bucket_size"] == int(0.9 * 32 * 32)
    assert filled["zero_optimization"]["param_persistence_threshold"] == 320
    assert filled["zero_force_ds_cpu_optimizer"] is False and filled["zero_allow_untested_optimizer"] is True
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "zero_force_ds_cpu_optimizer": True}))
    kept = deepspeed_config(ds, config, world=2, total_steps=10, warmup_steps=1)
    assert kept["zero_force_ds_cpu_optimizer"] is True  # a value the user wrote is theirs


def test_deepspeed_values_that_cannot_be_filled_or_read_are_named(tmp_path, tiny_model):
    config, _ = build_config(_llamafactory_yaml(tmp_path, tiny_model), check_paths=False)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({**ZERO3, "zero_optimization": {"stage": 2, "sub_group_size": "auto"}}))
    with pytest.raises(UserError) as e:
        deepspeed_config(odd, config, world=2, total_steps=10, warmup_steps=0)
    assert "zero_optimization.sub_group_size" in str(e.value.problems)
    own = tmp_path / "own.json"  # DeepSpeed's own optimizer would train with other settings than the run's
    own.write_text(json.dumps({**ZERO3, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}))
    with pytest.raises(UserError, match="own.json: optimizer section"):
        deepspeed_config(own, config, world=2, total_steps=10, warmup_steps=0)
    sized = tmp_path / "sized.json"  # numbers that disagree with the run's batches are named, not obeyed
    sized.write_text(json.dumps({**ZERO3, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2}))
    with pytest.raises(UserError) as e:
        deepspeed_config(sized, config, world=2, total_steps=10, warmup_steps=0)
    assert [p.split(":")[0] for p in e.value.problems] == ["train_micro_batch_size_per_gpu"]
    broken = tmp_path / "broken.json"
    broken.write_text("{stage: 3")
    with pytest.raises(UserError, match="broken.json is not a JSON file"):
        deepspeed_config(broken, config, world=2, total_steps=10, warmup_steps=0)
    bad_stage = tmp_path / "stage.json"
    bad_stage.write_text(json.dumps({"zero_optimization": {"stage": 4}}))
    with pytest.raises(UserError, match="zero_optimization.stage: 4"):
        deepspeed_config(bad_stage, config, world=2, total_steps=10, warmup_steps=0)


def test_a_deepspeed_json_at_odds_with_the_run_is_refused_up_front(tmp_path, tiny_model):
    """`tunepilot train` names the JSON's problem (exit 2) before data or a model is loaded."""
    pytest.importorskip("deepspeed")  # without it the refusal is "not installed", before the JSON is read
    ds = tmp_path / "ds_z3_config.json"
    ds.write_text(json.dumps({**ZERO3, "scheduler": {"type": "WarmupLR"}}))
    path = tmp_path / "lf.yaml"
    path.write_text(
        yaml.safe_dump(_llamafactory_yaml(tmp_path, tiny_model, deepspeed=str(ds), bf16=False, device="cpu"))
    )
    result = CliRunner().invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 2, result.output
    body = json.loads(result.stdout[result.stdout.index("{") :])
    assert "ds_z3_config.json: scheduler section" in json.dumps(body) and "lr_scheduler_type" in json.dumps(body)
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
