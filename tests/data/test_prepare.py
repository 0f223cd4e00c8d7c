"""The training data path: masking is exact, splits are deterministic, bad data is refused."""

from __future__ import annotations

import pytest

from tunepilot.config import DataSettings
from tunepilot.data import collate, load_conversations, prepare_datasets, render_prompt
from tunepilot.errors import UserError

QA = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(40)]


def trained_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_masking_trains_exactly_the_answer_and_end_of_turn(tok, jsonl):
    path = jsonl(QA)
    data = prepare_datasets(DataSettings(train=str(path)), tok, seed=0)
    assert len(data.train) == len(QA)
    for row, rec in zip(data.train, QA, strict=True):
        assert trained_text(tok, row) == rec["answer"] + "<|im_end|>"
        assert len(row["input_ids"]) == len(row["labels"])
        # Every trained position holds the same id as the input (labels are shifted by the model).
        assert all(lab in (-100, i) for lab, i in zip(row["labels"], row["input_ids"], strict=True))


def test_masking_with_the_real_smollm2_template(smol_tok, shared_data):
    settings = DataSettings(
        train=str(shared_data / "gsm8k" / "train.jsonl"),
        max_samples=50,
        columns={"prompt": "question", "response": "answer"},
    )
    data = prepare_datasets(settings, smol_tok, seed=0)
    convs = load_conversations(settings, "train")
    for row, conv in zip(data.train, convs, strict=True):
        assert trained_text(smol_tok, row) == conv.answer() + "<|im_end|>"
        # SmolLM2's template adds its default system prompt; it must not train.
        assert "You are a helpful AI assistant" in smol_tok.decode(row["input_ids"])
    prompt = render_prompt(convs[0].messages, smol_tok, settings)
    assert prompt.endswith("<|im_start|>assistant\n") and convs[0].answer() not in prompt


def test_banking77_csv_with_column_mapping(tok, shared_data):
    settings = DataSettings(
        train=str(shared_data / "banking77" / "train.csv"),
        max_samples=100,
        columns={"prompt": "text", "response": "category"},
    )
    data = prepare_datasets(settings, tok, seed=0)
    convs = load_conversations(settings, "train")
    assert len(data.train) == 100
    assert trained_text(tok, data.train[0]) == convs[0].answer() + "<|im_end|>"
    assert convs[0].line == 2  # line 1 is the CSV header


def test_val_split_is_deterministic_and_disjoint(tok, jsonl):
    settings = DataSettings(train=str(jsonl(QA)), val_size=0.25)
    a, b = prepare_datasets(settings, tok, seed=3), prepare_datasets(settings, tok, seed=3)
    c = prepare_datasets(settings, tok, seed=4)
    assert a.train == b.train and a.eval == b.eval
    assert len(a.eval) == 10 and len(a.train) == 30
    assert a.eval != c.eval
    train_ids = {tuple(r["input_ids"]) for r in a.train}
    assert not any(tuple(r["input_ids"]) in train_ids for r in a.eval)
    assert load_conversations(settings, "eval", seed=3)[0].answer() in tok.decode(a.eval[0]["input_ids"])


def test_max_samples_and_eval_file(tok, jsonl, tmp_path):
    train = jsonl(QA, "train.jsonl")
    evals = jsonl(
        [{"question": "What is 100 plus 1?", "answer": "101"}] * 1
        + [{"question": f"Name {i}?", "answer": f"n{i}"} for i in range(5)],
        "eval.jsonl",
    )
    settings = DataSettings(train=str(train), eval=str(evals), max_samples=7, max_eval_samples=3)
    data = prepare_datasets(settings, tok, seed=0)
    assert len(data.train) == 7 and len(data.eval) == 3


def test_record_cut_to_zero_trainable_tokens_is_dropped_and_counted(tok, jsonl):
    long_prompt = {"question": "word " * 200 + "?", "answer": "yes"}
    path = jsonl([*QA[:5], long_prompt])
    data = prepare_datasets(DataSettings(train=str(path), cutoff_len=64), tok, seed=0)
    assert data.stats["train"]["dropped"] == 1 and len(data.train) == 5
    assert any(f.code == "truncated_to_zero" and f.line == 6 for f in data.findings)
    assert all(len(r["input_ids"]) <= 64 for r in data.train)


def test_packing_keeps_every_token_and_respects_cutoff(tok, jsonl):
    path = jsonl(QA)
    plain = prepare_datasets(DataSettings(train=str(path)), tok, seed=0)
    packed = prepare_datasets(DataSettings(train=str(path), packing=True, cutoff_len=128), tok, seed=0)
    assert len(packed.train) < len(plain.train)
    assert all(len(r["input_ids"]) <= 128 for r in packed.train)
    flat = [t for r in packed.train for t in r["labels"]]
    assert flat == [t for r in plain.train for t in r["labels"]]


def test_collate_right_pads_and_masks_padding(tok):
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_errors_are_refused_with_file_line_and_code(tok, jsonl):
    path = jsonl([*QA[:3], "{broken json", {"question": "Q?", "answer": ""}])
    with pytest.raises(UserError) as err:
        prepare_datasets(DataSettings(train=str(path)), tok, seed=0)
    text = str(err.value)
    assert f"{path}:4: malformed_line" in text and f"{path}:5: empty_assistant_turn" in text
    assert err.value.code == 2


def test_train_on_prompt_and_mask_history(tok, jsonl):
    conv = {
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Count to 3"},
            {"role": "assistant", "content": "1 2 3"},
        ]
    }
    path = jsonl([conv])
    every = prepare_datasets(DataSettings(train=str(path)), tok, seed=0).train[0]
    last = prepare_datasets(DataSettings(train=str(path), mask_history=True), tok, seed=0).train[0]
    full = prepare_datasets(DataSettings(train=str(path), train_on_prompt=True), tok, seed=0).train[0]
    assert trained_text(tok, every) == "Hello<|im_end|>1 2 3<|im_end|>"
    assert trained_text(tok, last) == "1 2 3<|im_end|>"
    assert full["labels"] == full["input_ids"]


def test_system_setting_is_added_and_not_trained(tok, jsonl):
    path = jsonl(QA[:2])
    row = prepare_datasets(DataSettings(train=str(path), system="Be brief."), tok, seed=0).train[0]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in tok.decode(row["input_ids"])
    assert trained_text(tok, row) == QA[0]["answer"] + "<|im_end|>"


def test_backend_settings_do_not_truncate_silently(tok, jsonl):
    import copy

    path = jsonl([{"question": "Tell me a long story about apples " * 10, "answer": "Once upon a time."}])
    plain = prepare_datasets(DataSettings(train=str(path)), tok, seed=0).train
    truncating = copy.deepcopy(tok)
    truncating.backend_tokenizer.enable_truncation(max_length=16)
    assert prepare_datasets(DataSettings(train=str(path)), truncating, seed=0).train == plain
