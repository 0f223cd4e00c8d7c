"""Named templates mask exactly the answer plus their end-of-turn marker; render_prompt stops at the
generation point."""

from __future__ import annotations

import pytest

from tunepilot.config import DataSettings
from tunepilot.data import TEMPLATES, load_conversations, prepare_datasets, render_prompt

QA = [
    {"question": "Which number is even, 3 or 4?", "answer": "4 is even."},
    {"question": "Name a colour.", "answer": "Blue, for example."},
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_template_trains_the_answer_and_end_marker(name, tok, jsonl):
    # masking mechanics on one tokenizer: the markers of most templates are plain text to it
    settings = DataSettings(train=str(jsonl(QA)), template=name, allow_template_mismatch=True)
    data = prepare_datasets(settings, tok, seed=0)
    suffix = TEMPLATES[name].assistant_suffix.replace("{eos}", tok.eos_token)
    for row, rec in zip(data.train, QA, strict=True):
        trained = tok.decode([t for t in row["labels"] if t != -100])
        # A byte-level token may carry the space in front of the answer (llama2's "[/INST] 4").
        assert trained.lstrip() == rec["answer"] + suffix
        full = tok.decode(row["input_ids"])
        assert rec["question"] in full and full.index(rec["question"]) < full.index(rec["answer"])
    conv = load_conversations(settings, "train")[0]
    prompt = render_prompt(conv.messages, tok, settings)
    assert rec["answer"] not in prompt and QA[0]["question"] in prompt
    assert tok.decode(data.train[0]["input_ids"]).startswith(prompt.rstrip())


def test_alpaca_template_has_its_default_system_text(tok, jsonl):
    row = prepare_datasets(DataSettings(train=str(jsonl(QA)), template="alpaca"), tok, seed=0).train[0]
    text = tok.decode(row["input_ids"])
    assert text.startswith("Below is an instruction") and "### Response:\n4 is even." in text


def test_base_tokenizer_without_chat_template_needs_a_named_template(tok, jsonl):
    import copy

    from tunepilot.errors import UserError

    base = copy.deepcopy(tok)
    base.chat_template = None
    with pytest.raises(UserError, match="has none"):
        prepare_datasets(DataSettings(train=str(jsonl(QA))), base, seed=0)
    assert prepare_datasets(DataSettings(train=str(jsonl(QA)), template="chatml"), base, seed=0).train
    text = jsonl([{"text": "The quick brown fox."}])  # plain text uses no template: a base model is fine
    assert prepare_datasets(DataSettings(train=str(text), format="text"), base, seed=0).train


def test_plain_text_format_trains_every_token_and_ends_with_eos(tok, jsonl):
    path = jsonl([{"text": "The quick brown fox."}, {"text": "Jumps over the lazy dog."}])
    data = prepare_datasets(DataSettings(train=str(path)), tok, seed=0)
    row = data.train[0]
    assert row["labels"] == row["input_ids"]
    assert tok.decode(row["input_ids"]) == "The quick brown fox." + tok.eos_token
