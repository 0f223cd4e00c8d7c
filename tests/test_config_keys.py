"""Keys that change training are supported (DoRA, NEFTune, optimizers, cosine with min LR,
quantization_method) or refused when the config is read; ignored keys are named before training."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import build_config
from tunepilot.errors import ExitCode, UserError
from tunepilot.optimizers import build_optimizer, build_scheduler

BASE = {"model_name_or_path": "m", "dataset": "d"}


def config(**keys):
    return build_config({**BASE, **keys}, check_paths=False)[0]


def problems(**keys) -> list[str]:
    with pytest.raises(UserError) as e:
        build_config({**BASE, **keys}, check_paths=False)
    assert e.value.code == ExitCode.USAGE
    return e.value.problems


def test_use_dora_gives_peft_magnitude_vectors(tiny_model):
    from transformers import AutoModelForCausalLM

    from tunepilot.models import apply_method

    cfg = config(model_name_or_path=str(tiny_model), use_dora=True, lora_target="q_proj,v_proj")
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), cfg.method, cfg.model)
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 2 * 2  # q and v of 2 layers
    plain = config(model_name_or_path=str(tiny_model), lora_target="q_proj,v_proj")
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), plain.method, plain.model)
    assert not any("lora_magnitude_vector" in n for n, _ in model.named_parameters())


def test_neftune_noises_embeddings_in_train_mode_only_and_one_hook_per_model(tiny_model):
    from transformers import AutoModelForCausalLM

    from tunepilot.models import apply_method, set_neftune

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = config(model_name_or_path=str(tiny_model), neftune_noise_alpha=5.0)
    assert cfg.method.neftune_noise_alpha == 5.0
    model = apply_method(base, cfg.method, cfg.model)
    emb = base.get_input_embeddings()
    ids = torch.tensor([[1, 2, 3, 4]])
    clean = torch.nn.functional.embedding(ids, emb.weight)
    model.train()
    noisy = emb(ids)
    bound = 5.0 / (4 * emb.weight.shape[1]) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= bound + 1e-6
    model.eval()
    assert torch.equal(emb(ids), clean)
    set_neftune(base, 5.0)  # a sweep's next trial on the same base: still one hook
    assert len(emb._forward_hooks) == 1
    set_neftune(base, None)  # a trial without NEFTune removes it
    model.train()
    assert torch.equal(emb(ids), clean) and not emb._forward_hooks


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw_torch", "AdamW"), ("adamw_torch_fused", "AdamW"), ("sgd", "SGD"), ("adafactor", "Adafactor")],
)
def test_optim_builds_the_named_optimizer(name, cls):
    train = config(optim=name, weight_decay=0.1).train
    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]
    opt = build_optimizer(params, train)
    assert type(opt).__name__ == cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    if name == "adamw_torch_fused":
        assert opt.defaults["fused"]
    params[0].grad, params[1].grad = torch.ones(4, 4), torch.ones(4)
    before = params[0].detach().clone()
    opt.step()
    assert not torch.equal(before, params[0])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_bitsandbytes_optimizer_refused_up_front_without_bitsandbytes():
    (p,) = problems(optim="paged_adamw_8bit")
    assert p.startswith("train.optim:") and "pip install bitsandbytes" in p


def test_unknown_optimizer_lists_the_supported_ones():
    (p,) = problems(optim="lion_32bit")
    assert "adamw_torch" in p and "sgd" in p


def test_cosine_with_min_lr_ends_at_the_floor():
    train = config(
        learning_rate=1e-3, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}
    ).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.learning_rate)
    sched = build_scheduler(opt, train, warmup_steps=2, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[2] == pytest.approx(1e-3) and min(lrs[2:]) >= 1e-4 - 1e-12
    assert sched.get_last_lr()[0] == pytest.approx(1e-4)
    # HF's JSON-string form is read too
    assert config(
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs='{"min_lr": 1e-5}'
    ).train.lr_scheduler_kwargs == {"min_lr": 1e-5}


def test_scheduler_kwargs_checked_against_the_type():
    assert "needs exactly one of" in problems(lr_scheduler_type="cosine_with_min_lr")[0]
    assert "do not apply" in problems(lr_scheduler_kwargs={"min_lr": 1e-5})[0]


def test_quantization_method_bnb_accepted_others_refused():
    assert config(quantization_method="bnb").model.quantization_method == "bitsandbytes"
    (p,) = problems(quantization_method="hqq")
    assert p.startswith("model.quantization_method") and "bitsandbytes" in p


def test_refused_keys_are_accepted_at_their_off_value_and_named_otherwise():
    config(neat_packing=False, bias="none", resume_from_checkpoint=None)
    found = problems(neat_packing=True, resume_from_checkpoint="saves/x/checkpoint-100", loraplus_lr_ratio=16)
    assert len(found) == 3
    assert any(p.startswith("neat_packing: True is refused") and "packing: true" in p for p in found)
    assert any("--resume" in p for p in found)


def test_ignored_keys_are_named_before_training_starts(tmp_path, tiny_model):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    cfg = tmp_path / "c.yaml"
    # the run fails after the config is read (no such model): the warning was printed before it
    cfg.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tmp_path / "no-model"),
                "dataset": str(data),
                "plot_loss": True,
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == ExitCode.USAGE
    assert "ignored keys (not used by tunepilot): plot_loss" in result.output
    assert result.output.index("plot_loss") < result.output.index("error")
