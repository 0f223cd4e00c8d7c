"""Each transfer rule on the published configs of real model families."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config, load_config
from tunepilot.errors import UserError
from tunepilot.modelinfo import read_model_info
from tunepilot.transfer import TransferSettings, transfer_config, with_overrides


def proxy_config(model_configs, **keys):
    raw = {
        "model_name_or_path": str(model_configs / "Llama-3.1-8B"),
        "train": "unused.jsonl",
        "learning_rate": 2e-4,
        "lora_rank": 16,
        "lora_alpha": 32,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4,
        **keys,
    }
    return build_config(raw, check_paths=False)[0]


def run(model_configs, proxy, target, requested=None, settings=None, **keys):
    return transfer_config(
        model_configs / proxy,
        model_configs / target,
        proxy_config(model_configs, **keys),
        requested or {},
        settings,
    )


def steps(result):
    return {s.rule: s for s in result.steps}


def test_same_model_changes_nothing(model_configs):
    r = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B")
    assert r.lr_factor == pytest.approx(1.0)
    assert all(not s.changed for s in r.steps)


@pytest.mark.parametrize(
    ("proxy", "target", "exponent"),
    [
        ("Llama-3.2-1B", "Llama-3.1-70B", 0.781),
        ("Llama-3.1-8B", "Llama-3.2-3B", 0.781),
        ("Qwen2.5-0.5B", "Qwen2.5-32B", 0.0775),
        ("Qwen2.5-1.5B", "Qwen2.5-7B", 0.0775),
    ],
)
def test_width_rule_uses_the_family_fit(model_configs, proxy, target, exponent):
    r = run(model_configs, proxy, target)
    hp, ht = (
        read_model_info(model_configs / proxy).hidden_size,
        read_model_info(model_configs / target).hidden_size,
    )
    assert steps(r)["width"].lr_factor == pytest.approx((hp / ht) ** exponent)
    assert (r.lr_factor < 1) == (ht > hp)


def test_width_rule_is_transitive_and_invertible(model_configs):
    chain = ["Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Llama-3.1-70B"]
    direct = steps(run(model_configs, chain[0], chain[-1]))["width"].lr_factor
    product = 1.0
    for a, b in zip(chain, chain[1:], strict=False):
        product *= steps(run(model_configs, a, b))["width"].lr_factor
    assert product == pytest.approx(direct)
    back = steps(run(model_configs, chain[-1], chain[0]))["width"].lr_factor
    assert back * direct == pytest.approx(1.0)


def test_cross_family_uses_both_fits(model_configs):
    r = run(model_configs, "Llama-3.1-8B", "Qwen2.5-32B")
    expected = (2000 / 5120) ** 0.0775 / (2000 / 4096) ** 0.781
    assert steps(r)["width"].lr_factor == pytest.approx(expected)
    assert "families differ" in steps(r)["width"].reason


def test_depth_rule_is_a_setting(model_configs):
    default = run(model_configs, "Qwen2.5-14B", "Qwen2.5-32B")  # same width, 48 -> 64 layers
    assert default.lr_factor == pytest.approx(1.0)
    deep = run(model_configs, "Qwen2.5-14B", "Qwen2.5-32B", settings=TransferSettings(depth_exponent=0.5))
    assert deep.lr_factor == pytest.approx((48 / 64) ** 0.5)


def test_batch_rule_square_root_for_adam(model_configs):
    r = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"gradient_accumulation_steps": 16})
    assert r.target_config()["effective_batch"] == 64
    assert r.lr_factor == pytest.approx(2.0)  # 4x batch -> sqrt(4)
    linear = run(
        model_configs,
        "Llama-3.1-8B",
        "Llama-3.1-8B",
        {"gradient_accumulation_steps": 16},
        TransferSettings(batch_exponent=1.0),
    )
    assert linear.lr_factor == pytest.approx(4.0)


def test_gpu_rule_keeps_global_batch_or_lets_it_grow(model_configs):
    kept = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"gpus": 4})
    assert kept.target_config()["gradient_accumulation_steps"] == 1
    assert kept.target_config()["effective_batch"] == 16 and kept.lr_factor == pytest.approx(1.0)
    grown = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"gpus": 4}, TransferSettings(keep_global_batch=False))
    assert grown.target_config()["effective_batch"] == 64 and grown.lr_factor == pytest.approx(2.0)


def test_rank_change_keeps_alpha_ratio_and_moves_lr_inversely(model_configs):
    r = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"lora_rank": 64})
    assert r.target_config()["lora_alpha"] == 128 and r.lr_factor == pytest.approx(0.25)
    fixed = run(
        model_configs,
        "Llama-3.1-8B",
        "Llama-3.1-8B",
        {"lora_rank": 64},
        TransferSettings(alpha_policy="keep_alpha"),
    )
    assert fixed.target_config()["lora_alpha"] == 32 and fixed.lr_factor == pytest.approx(1.0)
    rs = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"lora_rank": 64}, use_rslora=True)
    assert rs.target_config()["lora_alpha"] == 32 and rs.lr_factor == pytest.approx(1.0)


def test_rank_policy_match_params_shrinks_rank_on_a_bigger_model(model_configs):
    keep = run(model_configs, "Llama-3.2-1B", "Llama-3.1-70B")
    assert keep.target_config()["lora_rank"] == 16
    match = run(model_configs, "Llama-3.2-1B", "Llama-3.1-70B", settings=TransferSettings(rank_policy="match_params"))
    assert match.target_config()["lora_rank"] < 16


def test_method_rule_full_to_lora_is_10x(model_configs):
    r = run(
        model_configs,
        "Qwen2.5-7B",
        "Qwen2.5-7B",
        {"method": "lora"},
        finetuning_type="full",
        learning_rate=1e-5,
    )
    assert r.target_config()["learning_rate"] == pytest.approx(1e-4)


def test_settings_overrides(model_configs):
    s = with_overrides(TransferSettings(), {"width_exponents.llama": 1.0})
    r = run(model_configs, "Llama-3.2-1B", "Llama-3.1-70B", settings=s)
    assert steps(r)["width"].lr_factor == pytest.approx(0.25)  # muP-style 1/width
    with pytest.raises(UserError, match="unknown transfer setting"):
        with_overrides(TransferSettings(), {"width_exponnt": 1})


def test_cli_json_and_written_config(model_configs, tmp_path):
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(
        f"model_name_or_path: {model_configs / 'Llama-3.1-8B'}\ntrain: x.jsonl\n"
        "learning_rate: 2.0e-4\nlora_rank: 16\nlora_alpha: 32\n"
    )
    out = tmp_path / "target.yaml"
    result = CliRunner().invoke(
        app,
        [
            "transfer",
            "--proxy-model",
            str(model_configs / "Llama-3.1-8B"),
            "--target-model",
            str(model_configs / "Llama-3.1-70B"),
            "--config",
            str(proxy),
            "--target-gpus",
            "8",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    tc = body["target_config"]
    assert {
        "learning_rate",
        "lora_rank",
        "lora_alpha",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "gpus",
        "effective_batch",
    } <= set(tc)
    assert [r["rule"] for r in body["rules"]] == [
        "method",
        "rank",
        "alpha",
        "width",
        "depth",
        "gpus",
        "batch",
    ]
    assert all(r["reason"] and r["source"] for r in body["rules"])
    config, _ = load_config(out, check_paths=False)
    # width 4096 -> 8192 (Llama fit) and 8 GPUs x micro-batch 4 instead of 1 x 4 (sqrt rule)
    assert config.train.learning_rate == tc["learning_rate"] == pytest.approx(2e-4 * 0.5**0.781 * 8**0.5, rel=2e-3)
    assert config.model.name_or_path.endswith("Llama-3.1-70B")


def test_text_output_shows_every_step_with_brackets_intact(model_configs, tmp_path):
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(f"model_name_or_path: {model_configs / 'Llama-3.1-8B'}\ntrain: x.jsonl\nlearning_rate: 2.0e-4\n")
    result = CliRunner().invoke(
        app,
        [
            "transfer",
            "--proxy-model",
            str(model_configs / "Llama-3.1-8B"),
            "--target-model",
            str(model_configs / "Qwen2.5-32B"),
            "--config",
            str(proxy),
        ],
    )
    assert result.exit_code == 0, result.output
    for rule in ("method", "rank", "alpha", "width", "depth", "gpus", "batch"):
        assert f"{rule}:" in result.stdout
    assert "[families differ" in result.stdout and "source:" in result.stdout


def test_transfer_to_n_gpus_keeps_the_effective_batch_on_any_process_count(model_configs):
    """Written for 4 GPUs, the config keeps micro x accumulation x nproc; run on one process, the plan
    accumulates the other ranks' micro-batches, so the LR trains at the batch it was chosen for."""
    from tunepilot.engines.plan import make_plan, step_indices

    result = run(model_configs, "Llama-3.1-8B", "Llama-3.1-8B", {"gpus": 4})
    train = result.config.train
    assert (train.per_device_train_batch_size, train.gradient_accumulation_steps, train.nproc) == (4, 1, 4)
    plan = make_plan(train, 10_000)
    assert plan.effective_batch == 16 and plan.accumulation == 4  # the proxy's 4 x 4 on one GPU
    one = step_indices(plan, 0, 3)
    ranks = [step_indices(plan, 0, 3, rank=r, world=4) for r in range(4)]
    assert sorted(i for r in ranks for b in r for i in b) == sorted(i for b in one for i in b)
    with pytest.raises(UserError, match="train.nproc"):
        step_indices(plan, 0, 1, rank=0, world=3)
