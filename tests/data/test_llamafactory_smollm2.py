"""A LLaMA-Factory project directory, as its users lay it out, trains unchanged on the real SmolLM2-135M
(`tunepilot train sft.yaml` through the CLI) and `tunepilot validate` reads the same folder.

The data are small files written from the real GSM8K train split (read in place under ../shared/data;
the shortest records, so that nothing is truncated at cutoff_len 128):
one alpaca dataset with LLaMA-Factory's default columns (instruction/input/output) and one sharegpt
dataset with its default `conversations` column and from/value/human/gpt tags, so neither entry of
dataset_info.json needs a `columns` or `tags` mapping.

`template: qwen` is kept as LLaMA-Factory users write it for a ChatML model: SmolLM2-Instruct is ChatML
(`<|im_start|>`/`<|im_end|>` are single special tokens of its tokenizer), so the wrong-template refusal
(`template_tokens_not_special`) must not fire; `qwen` only adds Qwen's default system prompt, which the
test checks in the tokenized examples. (`smollm2` would be the exact LLaMA-Factory name for this model.)
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app

N_ALPACA, N_SHAREGPT = 24, 16
MAX_TOKENS = 80  # question + answer tokens: with Qwen's system prompt and the markers (34), inside cutoff_len 128


@pytest.fixture
def gsm8k_project(tmp_path, shared_data, smollm2_dir):
    """project/data/{dataset_info.json, gsm8k_alpaca.json, gsm8k_sharegpt.json} and project/sft.yaml."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rows = []
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if (
                len(r["question"]) + len(r["answer"]) < 400
                and len(tok(r["question"] + r["answer"]).input_ids) <= MAX_TOKENS
            ):
                rows.append(r)
            if len(rows) == N_ALPACA + N_SHAREGPT:
                break
    alpaca = [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in rows[:N_ALPACA]]
    sharegpt = [
        {"conversations": [{"from": "human", "value": r["question"]}, {"from": "gpt", "value": r["answer"]}]}
        for r in rows[N_ALPACA:]
    ]
    root = tmp_path / "project"
    data = root / "data"
    data.mkdir(parents=True)
    (data / "gsm8k_alpaca.json").write_text(json.dumps(alpaca, indent=2), encoding="utf-8")
    (data / "gsm8k_sharegpt.json").write_text(json.dumps(sharegpt, indent=2), encoding="utf-8")
    info = {
        "gsm8k_alpaca": {"file_name": "gsm8k_alpaca.json"},
        "gsm8k_sharegpt": {"file_name": "gsm8k_sharegpt.json", "formatting": "sharegpt"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    # The shape of LLaMA-Factory's examples/train_lora/*_lora_sft.yaml, text as users write it.
    (root / "sft.yaml").write_text(
        f"""\
### model
model_name_or_path: {smollm2_dir}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: gsm8k_alpaca,gsm8k_sharegpt
dataset_dir: data
template: qwen
cutoff_len: 128
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 4
dataloader_num_workers: 0

### output
output_dir: saves/smollm2/lora/sft
logging_steps: 1
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
max_steps: 3
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
val_size: 0.05
per_device_eval_batch_size: 2
eval_strategy: steps
eval_steps: 3
""",
        encoding="utf-8",
    )
    return root


@pytest.mark.slow
def test_llamafactory_project_trains_unchanged_on_smollm2_and_validates(gsm8k_project, smollm2_dir, monkeypatch):
    root = gsm8k_project
    monkeypatch.chdir(root)  # as LLaMA-Factory is run: from the project root, output_dir relative to it
    runner = CliRunner()

    t0 = time.perf_counter()
    v = runner.invoke(app, ["validate", "data", "--config", "sft.yaml", "--json"])
    assert v.exit_code == 0, v.output
    venv = json.loads(v.stdout)
    assert venv["template"] == "qwen" and venv["tokenizer"] == str(smollm2_dir)
    assert venv["errors"] == 0 and "template_tokens_not_special" not in venv["counts"]
    assert venv["stats"]["train"]["records"] == N_ALPACA + N_SHAREGPT  # both datasets, each in its format
    assert venv["stats"]["train"]["truncated"] == 0 and venv["stats"]["train"]["trainable_tokens"] > 0
    # and with the model and template given on the command line, as docs/data.md shows it
    v2 = runner.invoke(app, ["validate", "data", "--model", str(smollm2_dir), "--template", "qwen", "--json"])
    assert v2.exit_code == 0, v2.output
    assert json.loads(v2.stdout)["stats"]["train"]["records"] == N_ALPACA + N_SHAREGPT
    t_validate = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = runner.invoke(app, ["train", "sft.yaml", "--json"])
    t_train = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert env["ok"] and env["steps"] == 3
    data = env["data"]
    assert data["train"]["records"] + data["eval"]["records"] == N_ALPACA + N_SHAREGPT and data["eval"]["records"] >= 1
    # keys with no effect on training are named, none refused
    joined = "\n".join(env["warnings"])
    assert "plot_loss" in joined and "ddp_timeout" in joined

    run = root / "saves" / "smollm2" / "lora" / "sft"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["template"] == "qwen" and resolved["data"]["train"] == "gsm8k_alpaca,gsm8k_sharegpt"
    assert resolved["data"]["dataset_dir"] == str((root / "data").resolve())
    assert resolved["model"]["dtype"] == "bfloat16"  # bf16: true
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        adapter["target_modules"]
    )  # lora_target: all = every linear layer but the head
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["loss"] == r["loss"] for r in steps)
    assert evals and evals[-1]["step"] == 3

    # the tokenized examples carry Qwen's default system prompt and train only the answers (ChatML masking)
    from tunepilot.config import load_config
    from tunepilot.data import prepare_datasets
    from tunepilot.models import load_tokenizer

    config, _ = load_config(root / "sft.yaml")
    tok = load_tokenizer(config.model)
    prepared = prepare_datasets(config.data, tok, seed=0)
    ex = prepared.train[0]
    assert tok.decode(ex["input_ids"]).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert "####" in trained and trained.endswith("<|im_end|>") and "<|im_start|>" not in trained

    print(f"\nvalidate x2 {t_validate:.1f} s, train 3 steps {t_train:.1f} s")
