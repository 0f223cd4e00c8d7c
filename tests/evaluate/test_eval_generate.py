"""Batched generation and evaluate_model on the tiny random model: mechanics, not quality."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunepilot.errors import UserError
from tunepilot.evaluate.examples import EvalExample, fixed_subset, from_conversation, with_shots
from tunepilot.evaluate.generate import generate
from tunepilot.evaluate.runner import evaluate_model, render_prompts, write_results
from tunepilot.evaluate.settings import EvalSettings

QUESTIONS = [
    "How many clips?",
    "Book a table for 4 people at 7pm tomorrow under the name Smith please.",
    "card",
    "The quick brown fox jumps over the lazy dog. How many?",
    "I still have not received it.",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _examples(refs=None):
    refs = refs or ["72"] * len(QUESTIONS)
    return [
        EvalExample(({"role": "user", "content": q},), r, f"eval.jsonl:{i + 1}")
        for i, (q, r) in enumerate(zip(QUESTIONS, refs, strict=True))
    ]


def test_batched_generation_equals_one_by_one(model_and_tokenizer):
    """Left padding + attention mask must not change a greedy answer; order must be restored."""
    model, tok = model_and_tokenizer
    prompts = render_prompts(tok, _examples())
    batched = [a.text for a in generate(model, tok, prompts, max_new_tokens=6, batch_size=3)]
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0].text for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1  # distinct prompts, distinct answers: the comparison means something


def test_generation_respects_limits_and_restores_state(model_and_tokenizer):
    model, tok = model_and_tokenizer
    model.train()
    tok.padding_side = "right"
    answers = generate(model, tok, render_prompts(tok, _examples()), max_new_tokens=3, batch_size=2)
    assert all(1 <= a.tokens <= 3 for a in answers) and any(a.tokens == 3 for a in answers)
    assert model.training and tok.padding_side == "right"


def test_evaluate_model_scores_and_writes_results(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    examples = _examples()
    metric_file = tmp_path / "m.py"
    metric_file.write_text("def length(p, r):\n    return float(len(p))\n")
    settings = EvalSettings(metric=f"{metric_file}:length", max_new_tokens=4, batch_size=2)
    scores = evaluate_model(model, tok, examples, settings)
    assert scores.n == len(examples) and scores.direction == "maximize"
    assert scores.value == pytest.approx(sum(len(r.prediction) for r in scores.records) / len(examples))
    path = write_results(tmp_path / "eval" / "results.jsonl", scores)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["source"] for r in rows] == [e.source for e in examples]
    assert rows[1]["prompt"].endswith("<|im_start|>assistant\n") and QUESTIONS[1] in rows[1]["prompt"]
    assert {"reference", "prediction", "score", "extracted", "note"} <= set(rows[0])


def test_bad_reference_names_the_record(model_and_tokenizer):
    model, tok = model_and_tokenizer
    settings = EvalSettings(metric="numeric_match", max_new_tokens=2)
    with pytest.raises(UserError, match=r"eval.jsonl:2: reference has no number"):
        evaluate_model(model, tok, _examples(["1", "two", "3", "4", "5"]), settings)


def test_accuracy_labels_default_to_distinct_references(model_and_tokenizer):
    model, tok = model_and_tokenizer
    refs = ["card_arrival", "pin_blocked", "card_arrival", "age_limit", "pin_blocked"]
    scores = evaluate_model(model, tok, _examples(refs), EvalSettings(metric="accuracy", max_new_tokens=3))
    assert 0.0 <= scores.value <= 1.0 and set(scores.metrics) == {"accuracy", "unmatched"}


def test_few_shot_turns_go_after_system_and_before_the_question():
    system = {"role": "system", "content": "Answer with a number."}
    example = EvalExample((system, {"role": "user", "content": "Q?"}), "3")
    user, answer = {"role": "user", "content": "S?"}, {"role": "assistant", "content": "1"}
    shot = from_conversation([system, user, answer])
    assert with_shots(example, [shot]) == [system, user, answer, {"role": "user", "content": "Q?"}]


def test_from_conversation_needs_an_assistant_turn_and_fixed_subset_is_stable():
    with pytest.raises(UserError, match="data.jsonl:3"):
        from_conversation([{"role": "user", "content": "hi"}], "data.jsonl:3")
    examples = _examples()
    assert fixed_subset(examples, 2) == [examples[0], examples[2]] == fixed_subset(examples, 2)
    assert fixed_subset(examples, 10) == examples


def test_task_objective_scores_a_fixed_subset_then_the_full_split(model_and_tokenizer, tmp_path):
    from tunepilot.config import DataSettings
    from tunepilot.data import load_conversations
    from tunepilot.evaluate.objective import TaskObjective

    model, tok = model_and_tokenizer
    rows = [{"prompt": q, "response": str(i)} for i, q in enumerate(QUESTIONS * 2)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSettings(train=str(path), val_size=0.5)
    settings = EvalSettings(metric="numeric_match", subset_size=2, max_new_tokens=2)
    objective = TaskObjective(settings, data, seed=3)
    assert len(objective.examples) == 5 and len(objective.subset) == 2
    held_out = load_conversations(data, "eval", seed=3)  # the trainer's hold-out: same records
    assert [e.source for e in objective.examples] == [f"{c.source}:{c.line}" for c in held_out]
    assert objective(model, tok).n == 2 and objective(model, tok, full=True).n == 5
    assert objective.better(0.5, None) and objective.better(0.5, 0.4) and not objective.better(0.4, 0.5)
    lower = TaskObjective(EvalSettings(metric="numeric_match", direction="minimize"), data, seed=3)
    assert lower.better(0.4, 0.5)


def test_training_continues_after_an_eval_point(tiny_model):
    """evaluate_model inside a training loop: the adapter still trains afterwards, in train mode."""
    from peft import get_peft_model

    from tunepilot.config import MethodSettings
    from tunepilot.models import lora_config

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(MethodSettings()))
    model.train()
    evaluate_model(model, tok, _examples(), EvalSettings(metric="exact_match", max_new_tokens=3))
    assert model.training
    batch = tok(["How many clips? #### 72"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_labels_file_json_list_or_lines_and_its_errors(tmp_path, shared_data):
    from tunepilot.evaluate.runner import read_labels, resolve_labels

    assert len(read_labels(shared_data / "banking77" / "categories.json")) == 77
    lines = tmp_path / "labels.txt"
    lines.write_text("card_arrival\n\npin_blocked\n")
    settings = EvalSettings(metric="accuracy", labels_file=str(lines))
    assert resolve_labels(settings, _examples()) == ("card_arrival", "pin_blocked")
    assert resolve_labels(settings.model_copy(update={"labels": ["x"]}), _examples()) == ("x",)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n"a",\n]')
    with pytest.raises(UserError, match=r"bad.json:3: invalid JSON"):
        read_labels(bad)
    with pytest.raises(UserError, match="not found"):
        read_labels(tmp_path / "missing.json")
