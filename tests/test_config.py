from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config, config_with, dump_config, load_config
from tunepilot.errors import ExitCode, UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_three_mistakes_reported_at_once_with_exit_2(tmp_path):
    cfg = write(
        tmp_path,
        {
            "model": {"name_or_path": "m"},
            "data": {"train": str(tmp_path / "missing.jsonl")},
            "train": {"learning_rate": -1e-4, "lerning_rate_decay": 0.1},
        },
    )
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == ExitCode.USAGE
    out = result.output
    assert "3 problem(s)" in out
    assert "train.lerning_rate_decay: unknown key" in out
    assert "train.learning_rate: -0.0001 is invalid" in out
    assert "data.train:" in out and "does not exist" in out
    assert "Traceback" not in out


def test_did_you_mean_for_flat_keys():
    with pytest.raises(UserError) as e:
        build_config({"model_name_or_path": "m", "dataset": "x", "lora_rnak": 8}, check_paths=False)
    assert "did you mean 'lora_rank'" in str(e.value)


def test_llamafactory_yaml_loads_with_keys_mapped_and_unused_keys_named():
    config, warnings = load_config(ROOT / "examples" / "llamafactory_llama3_lora_sft.yaml", check_paths=False)
    assert config.model.name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert config.model.dtype == "bfloat16"  # bf16: true
    assert config.method.lora_target == ["all-linear"]  # lora_target: all
    assert config.method.lora_rank == 8 and config.method.alpha == 16
    assert config.train.gradient_accumulation_steps == 8
    assert config.data.template == "llama3" and config.data.cutoff_len == 2048
    for key in ("ddp_timeout", "plot_loss", "preprocessing_num_workers"):
        assert key in warnings[0]
    assert "report_to" not in warnings[0] and config.tracking.report_to == []  # report_to: none


def test_resolution_order_defaults_file_overrides(tmp_path):
    cfg = write(tmp_path, {"model_name_or_path": "m", "dataset": "d", "learning_rate": 1e-4})
    config, _ = load_config(cfg, ["learning_rate=3e-4", "train.seed=7", "lora_target=q_proj,v_proj"], check_paths=False)
    assert config.train.learning_rate == 3e-4
    assert config.train.seed == 7
    assert config.method.lora_target == ["q_proj", "v_proj"]
    assert config.train.weight_decay == 0.0  # default untouched


def test_dump_round_trips_and_config_with_validates():
    config, _ = build_config({"model_name_or_path": "m", "dataset": "d", "lora_rank": 16}, check_paths=False)
    again, _ = build_config(yaml.safe_load(dump_config(config)), check_paths=False)
    assert again == config
    changed = config_with(config, {"learning_rate": 1e-3, "lora_rank": 4})
    assert changed.train.learning_rate == 1e-3 and changed.method.lora_rank == 4
    with pytest.raises(UserError):
        config_with(config, {"lora_rank": 0})


def test_gguf_path_is_split_into_dir_and_file():
    config, _ = build_config({"model_name_or_path": "/x/y/model.Q4.gguf", "dataset": "d"}, check_paths=False)
    assert (config.model.name_or_path, config.model.gguf_file) == ("/x/y", "model.Q4.gguf")


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name_or_path: m\n data: [\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert f"{path}:" in e.value.message and "invalid YAML" in e.value.message


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses(example, monkeypatch):
    from tunepilot.search.spec import load_sweep

    raw = yaml.safe_load(example.read_text())
    if "space" in raw:  # a sweep file: its spec and its base config
        monkeypatch.chdir(ROOT)  # data paths in the examples are relative to the repository root
        spec, _ = load_sweep(example)
        assert spec.space
    else:
        load_config(example, check_paths=False)


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.startswith("tunepilot ")
    assert "train" in runner.invoke(app, ["--help"]).output


def test_unsupported_stage_is_reported_with_the_other_problems():
    with pytest.raises(UserError) as e:
        build_config({"model_name_or_path": "m", "dataset": "d", "stage": "dpo", "lora_rnak": 8}, check_paths=False)
    assert len(e.value.problems) == 2 and any("stage: 'dpo'" in p for p in e.value.problems)
