"""`tunepilot evaluate` in-process on the tiny model: config vs run directory, adapter vs --base, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app

QA = [
    {"question": f"How many clips did Natalia sell on day {i}?", "answer": f"She sold {i} clips. #### {i}"}
    for i in range(1, 7)
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("evalcli")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA))
    config = {
        "model": {"name_or_path": str(tiny_model)},
        "data": {"train": str(data), "eval": str(data)},
        "train": {"device": "cpu"},
        "output": {"output_dir": str(root / "run")},
        "evaluate": {"metric": "numeric_match", "max_new_tokens": 5, "batch_size": 4},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _invoke(*args):
    result = CliRunner().invoke(app, ["evaluate", *map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout)


def _predictions(path):
    return [json.loads(line)["prediction"] for line in Path(path).read_text().splitlines()]


def _make_run(workspace, tiny_model):
    """A run directory as `tunepilot train` leaves it, with an adapter whose B is not zero (so it
    changes the model's answers)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunepilot.config import MethodSettings
    from tunepilot.models import lora_config

    run = workspace / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text((workspace / "config.yaml").read_text())
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(MethodSettings()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(run / "adapter")
    return run


def test_config_scores_base_model_and_writes_results(workspace):
    code, env = _invoke(workspace / "config.yaml", "--limit", 4, "--out", workspace / "base.jsonl")
    assert code == 0 and env["ok"] and env["command"] == "evaluate"
    assert env["metric"] == "numeric_match" and env["n"] == 4 and env["adapter"] is None
    rows = [json.loads(line) for line in (workspace / "base.jsonl").read_text().splitlines()]
    # --limit is a seeded sample spread over the file (in file order), not its first 4 records
    answers = [r["answer"] for r in QA]
    refs = [r["reference"] for r in rows]
    assert len(set(refs)) == 4 and all(a in answers for a in refs)
    assert [answers.index(a) for a in refs] == sorted(answers.index(a) for a in refs)
    assert env["value"] == pytest.approx(sum(r["score"] for r in rows) / 4)


def test_run_directory_applies_the_adapter_and_base_skips_it(workspace, tiny_model):
    run = _make_run(workspace, tiny_model)
    code, env = _invoke(run, "--metric", "token_f1")
    assert code == 0 and env["adapter"] == str(run / "adapter")
    assert env["results"] == str(run / "eval" / "qa-tuned.jsonl")
    code, base_env = _invoke(run, "--base", "--metric", "token_f1")
    assert code == 0 and base_env["adapter"] is None and base_env["results"].endswith("qa-base.jsonl")
    _invoke(workspace / "config.yaml", "--metric", "token_f1", "--out", workspace / "cfg.jsonl")
    assert _predictions(base_env["results"]) == _predictions(workspace / "cfg.jsonl")
    assert _predictions(env["results"]) != _predictions(base_env["results"])


def test_full_finetune_run_loads_its_model_directory(workspace, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "fullrun"
    run.mkdir()
    (run / "config.yaml").write_text((workspace / "config.yaml").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "model")
    code, env = _invoke(run, "--metric", "token_f1")
    assert code == 0 and env["tuned"] and env["adapter"] is None
    code, base_env = _invoke(run, "--base", "--metric", "token_f1")
    assert _predictions(env["results"]) != _predictions(base_env["results"])


def test_few_shot_puts_train_answers_in_the_prompt(workspace):
    out = workspace / "fs.jsonl"
    code, env = _invoke(workspace / "config.yaml", "--few-shot", 2, "--limit", 1, "--out", out)
    prompt = json.loads(out.read_text().splitlines()[0])["prompt"]
    assert code == 0 and env["few_shot"] == 2
    assert prompt.count("<|im_start|>assistant") == 3 and QA[0]["answer"] in prompt


@pytest.mark.parametrize(
    "args,needle",
    [
        (["missing.yaml"], "config file not found"),
        (["--data", "nowhere.jsonl"], "eval data not found"),
        (["--metric", "no_such_module_xyz:f"], "cannot import module"),
        (["--metric", "bleu9000"], "unknown"),
    ],
)
def test_user_errors_exit_2_with_a_message(workspace, args, needle):
    target = [] if args[0] == "missing.yaml" else [workspace / "config.yaml"]
    code, env = _invoke(*target, *args)
    assert code == 2 and not env["ok"] and needle in env["error"]["message"]


def test_eval_split_defaults_to_the_val_size_hold_out(workspace, tmp_path):
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    del raw["data"]["eval"]
    (tmp_path / "noeval.yaml").write_text(yaml.safe_dump(raw))
    code, env = _invoke(tmp_path / "noeval.yaml")
    assert code == 2 and "no eval data" in env["error"]["message"]
    raw["data"]["val_size"] = 0.5
    (tmp_path / "val.yaml").write_text(yaml.safe_dump(raw))
    code, env = _invoke(tmp_path / "val.yaml", "--out", tmp_path / "val.jsonl")
    assert code == 0 and env["n"] == 3 and env["data"] == "val"


def test_directory_without_config_and_bad_evaluate_section(workspace, tmp_path):
    code, env = _invoke(tmp_path)
    assert code == 2 and "not a run directory" in env["error"]["message"]
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    raw["evaluate"]["max_new_tokns"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    code, env = _invoke(bad)
    assert code == 2 and any("max_new_tokns" in p for p in env["error"]["problems"])


def test_text_output_names_metric_counts_and_results_file(workspace):
    out = workspace / "text.jsonl"
    result = CliRunner().invoke(
        app, ["evaluate", str(workspace / "config.yaml"), "--metric", "accuracy", "--limit", 3, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy = " in result.stdout and "on 3 records of qa (base model" in result.stdout
    assert "unmatched: " in result.stdout and str(out) in result.stdout.replace("\n", "")


def test_labels_file_flag_sets_the_allowed_answers(workspace):
    labels = workspace / "labels.json"
    labels.write_text(json.dumps([r["answer"] for r in QA] + ["an answer no record has"]))
    code, env = _invoke(
        workspace / "config.yaml",
        "--metric",
        "accuracy",
        "--labels-file",
        labels,
        "--limit",
        2,
        "--out",
        workspace / "acc.jsonl",
    )
    assert code == 0 and env["metric"] == "accuracy" and env["n"] == 2
    code, env = _invoke(workspace / "config.yaml", "--metric", "accuracy", "--labels-file", workspace / "nope.txt")
    assert code == 2 and "--labels-file" in env["error"]["message"]
