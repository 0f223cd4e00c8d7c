"""`--limit` and `max_eval_samples` take a seeded sample across the split, labels come from all of it,
and the task objective's final value is comparable with its eval-point values."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tunepilot.config import DataSettings
from tunepilot.evaluate.examples import EvalExample, spread_sample
from tunepilot.evaluate.objective import TaskObjective
from tunepilot.evaluate.settings import EvalSettings


def examples(labels: list[str]) -> list[EvalExample]:
    return [EvalExample(({"role": "user", "content": f"text {i}"},), label, f"f:{i}") for i, label in enumerate(labels)]


def test_spread_sample_covers_the_classes_of_a_sorted_file():
    split = examples(["a"] * 30 + ["b"] * 30 + ["c"] * 30)  # sorted by class, like BANKING77's files
    sample = spread_sample(split, 9, seed=0)
    assert sorted(e.reference for e in sample) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert [e.source for e in sample] == sorted((e.source for e in sample), key=lambda s: int(s[2:]))
    assert spread_sample(split, 9, seed=0) == sample and spread_sample(split, 9, seed=1) != sample
    assert spread_sample(split, None) == split


def test_spread_sample_on_unique_answers_is_a_seeded_uniform_sample():
    split = examples([str(i) for i in range(100)])
    sample = spread_sample(split, 10, seed=3)
    assert len(sample) == 10 and max(int(e.reference) for e in sample) > 20


def test_real_banking77_limit_is_spread_over_intents(shared_data):
    with open(shared_data / "banking77" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    split = examples([r["category"] for r in rows])
    first = {e.reference for e in split[:77]}
    sample = {e.reference for e in spread_sample(split, 77, seed=42)}
    assert len(first) < 5 and len(sample) == 77  # the head is one or two intents; the sample has all


@pytest.fixture
def classification(tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [{"instruction": f"item {i}", "output": "even" if i < 20 else "odd"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_objective_honours_max_eval_samples_and_labels_come_from_the_whole_split(classification):
    data = DataSettings(train=str(classification), eval=str(classification), max_eval_samples=6)
    objective = TaskObjective(EvalSettings(metric="accuracy", subset_size=4), data, seed=0)
    assert len(objective.examples) == 6 and len(objective.subset) == 4
    assert {e.reference for e in objective.examples} == {"even", "odd"}
    limited = TaskObjective(EvalSettings(metric="accuracy", limit=1), data, seed=0)
    assert len(limited.examples) == 1  # the smaller of evaluate.limit and max_eval_samples
    assert set(limited.metric.matcher.by_norm.values()) == {"even", "odd"}  # labels: the whole split


def test_final_value_is_the_subset_score_and_the_full_score_is_reported_apart(classification, tiny_model):
    from transformers import AutoModelForCausalLM

    from tunepilot.config import ModelSettings
    from tunepilot.models import load_tokenizer

    data = DataSettings(train=str(classification), eval=str(classification), max_eval_samples=8, template="chatml")
    logged = []
    objective = TaskObjective(
        EvalSettings(metric="accuracy", subset_size=3, max_new_tokens=2), data, seed=0, log=logged.append
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = load_tokenizer(ModelSettings(name_or_path=str(tiny_model)))
    point = objective(model, tok)
    final = objective(model, tok, full=True)
    assert point.n == 3 and final.n == 8
    assert final.value == pytest.approx(point.value)  # same records, same greedy answers
    assert final.metrics["n_full"] == 8 and "accuracy_full" in final.metrics
