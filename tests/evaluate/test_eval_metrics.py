"""Every built-in metric on hand-made predictions, and the custom-metric loader's errors."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tunepilot.errors import UserError
from tunepilot.evaluate.metrics import (
    BadReference,
    CustomMetricError,
    MetricContext,
    build_metric,
    extract_number,
    find_json_object,
)


def _run(metric, pairs):
    scored = [metric.score(p, r) for p, r in pairs]
    return scored, metric.aggregate(scored)


def test_exact_match_normalises_case_punctuation_articles_and_spaces():
    scored, agg = _run(
        build_metric("exact_match"),
        [
            ("  The Eiffel   Tower.", "eiffel tower"),
            ("Paris!", "paris"),
            ("Lyon", "Paris"),
        ],
    )
    assert [s.score for s in scored] == [1.0, 1.0, 0.0]
    assert agg == {"exact_match": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Janet sells 9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.50"),
        ("She paid $70 in total and had 3 coins left", "3"),  # no marker: the last number
        ("So the answer is 42. I hope this helps with question 7!", "42"),  # the marker wins over later numbers
        ("16 - 3 - 4 = 9 eggs, so 16-3-4=9.", "9"),  # hyphens between numbers are not signs
        ("The temperature fell to -5 degrees.", "-5"),
        ("He lost -$3 on the deal", "-3"),
        ("The final result is \\boxed{12} apples", "12"),
        ("1,2,3 go", "3"),  # comma-separated list, not a thousands number
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == Decimal(expected)


def test_extract_number_none_without_digits():
    assert extract_number("I do not know.") is None


def test_numeric_match_with_extra_text_and_formats():
    reference = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    scored, agg = _run(
        build_metric("gsm8k"),
        [
            ("Natalia sold 48 + 24 = 72 clips altogether. The answer is 72.", reference),
            ("#### 72.00", reference),
            ("She sold $72", reference),
            ("24", reference),
            ("I cannot tell.", reference),
        ],
    )
    assert [s.score for s in scored] == [1, 1, 1, 0, 0]
    assert scored[1].extracted == "72"
    assert scored[4].note == "no number in the prediction"
    assert agg["numeric_match"] == pytest.approx(0.6)


def test_numeric_match_reference_without_number_is_a_data_problem():
    with pytest.raises(BadReference):
        build_metric("numeric_match").score("3", "three")


LABELS = ("card_arrival", "card_linking", "exchange_rate", "card_payment_wrong_exchange_rate", "pin_blocked")


def test_accuracy_maps_generation_to_the_closest_label():
    metric = build_metric("accuracy", MetricContext(labels=LABELS))
    scored, agg = _run(
        metric,
        [
            ("card_arrival", "card_arrival"),
            ("Card Arrival", "card_arrival"),  # case and separator
            (
                "card_payment_wrong_exchange_rate\nThe customer was charged the wrong rate.",
                "card_payment_wrong_exchange_rate",
            ),  # longest label at the earliest position, not exchange_rate
            ("Intent: pin_blocked.", "pin_blocked"),  # label inside text
            ("card_arival", "card_arrival"),  # one typo
            ("exchange_rate", "card_arrival"),  # a real label, but wrong
            ("I am not sure what you mean", "card_linking"),  # no label at all
        ],
    )
    assert [s.score for s in scored] == [1, 1, 1, 1, 1, 0, 0]
    assert scored[2].extracted == "card_payment_wrong_exchange_rate"
    assert scored[6].note == "matches no allowed label"
    assert agg == {"accuracy": pytest.approx(5 / 7), "unmatched": 1.0}


def test_accuracy_rejects_reference_outside_label_set_and_needs_labels():
    with pytest.raises(BadReference):
        build_metric("accuracy", MetricContext(labels=LABELS)).score("card_arrival", "balance_not_updated")
    with pytest.raises(UserError, match="label set"):
        build_metric("accuracy")


def test_accuracy_on_banking77_categories(shared_data):
    labels = tuple(json.loads((shared_data / "banking77" / "categories.json").read_text()))
    assert len(labels) == 77
    metric = build_metric("accuracy", MetricContext(labels=labels))
    assert metric.score("Top up by bank transfer charge", "top_up_by_bank_transfer_charge").score == 1.0
    assert metric.score("top_up_by_card_charge", "top_up_by_bank_transfer_charge").score == 0.0


def test_token_f1():
    scored, agg = _run(
        build_metric("f1"),
        [
            ("the cat sat on the mat", "a cat sat on a mat"),  # articles removed: identical
            ("cat sat", "cat sat on mat"),  # p=1, r=0.5
            ("dog", "cat"),
            ("", ""),
        ],
    )
    assert [s.score for s in scored] == pytest.approx([1.0, 2 / 3, 0.0, 1.0])
    assert agg["token_f1"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)


REF = json.dumps({"people": "4", "time": "7pm", "first_name": "Anna"})


def test_field_f1_valid_fenced_and_malformed_json():
    metric = build_metric("json_fields")
    scored, agg = _run(
        metric,
        [
            ('{"people": 4, "time": "7PM", "first_name": "anna"}', REF),  # 3/3: numbers and case normalised
            ('Sure! Here it is:\n```json\n{"people": "4", "time": "8pm"}\n```\nAnything else?', REF),  # 1 tp 1 fp
            ('{"people": "4", "time": "7pm", "first_name": "Anna",}', REF),  # trailing comma: invalid
            ("people: 4, time: 7pm", REF),  # no object at all
        ],
    )
    assert [s.counts["tp"] for s in scored] == [3, 1, 0, 0]
    assert [s.counts["invalid_json"] for s in scored] == [0, 0, 1, 1]
    assert scored[2].note.startswith("invalid JSON")
    tp, fp, fn = 4, 1, 0 + 2 + 3 + 3
    assert agg["field_precision"] == pytest.approx(tp / (tp + fp))
    assert agg["field_recall"] == pytest.approx(tp / (tp + fn))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert agg["field_f1"] == pytest.approx(2 * p * r / (p + r))
    assert agg["invalid_json"] == 2.0
    assert agg["json_exact"] == pytest.approx(0.25)


def test_field_f1_nested_lists_nulls_and_empty_reference():
    metric = build_metric("field_f1")
    ref = json.dumps({"party": {"size": 2}, "names": ["Ann", "Bob"], "date": None})
    assert metric.score('{"party": {"size": "2"}, "names": ["bob", "ann"]}', ref).score == 1.0
    assert metric.score('{"names": ["Ann"]}', ref).counts == {"tp": 1, "fp": 0, "fn": 2, "invalid_json": 0}
    assert metric.score("{}", "{}").score == 1.0  # nothing to extract, nothing extracted
    with pytest.raises(BadReference):
        metric.score("{}", "not json")


def test_find_json_object_skips_braces_that_are_not_json():
    assert find_json_object('set {x} then {"a": 1} and {"b": 2}') == {"a": 1}
    assert find_json_object("[1, 2]") is None


def test_unknown_metric_names_the_choices():
    with pytest.raises(UserError, match="exact_match"):
        build_metric("bleu9000")


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    return path


def test_custom_metric_from_file(tmp_path):
    path = _write(tmp_path, "mymetrics.py", "def starts(p, r):\n    return p.startswith(r)\n")
    metric = build_metric(f"{path}:starts")
    scored, agg = _run(metric, [("yes, indeed", "yes"), ("no", "yes")])
    assert [s.score for s in scored] == [1.0, 0.0]
    assert agg == {f"{path}:starts": 0.5}


def test_custom_metric_from_module():
    metric = build_metric("difflib:SequenceMatcher")  # importable, callable; returns an object, not a number
    with pytest.raises(CustomMetricError, match="finite number"):
        metric.score("a", "b")


@pytest.mark.parametrize(
    "spec_body,match",
    [
        ("no_such_module_xyz:f", "cannot import module"),
        ("json:no_such_function", "has no attribute"),
        ("json:__name__", "not a function"),
        (":f", "module:function"),
    ],
)
def test_custom_metric_load_errors(spec_body, match):
    with pytest.raises(UserError, match=match):
        build_metric(spec_body)


def test_custom_metric_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_metric(f"{tmp_path}/missing.py:f")
    broken = _write(tmp_path, "broken.py", "import no_such_module_xyz\n")
    with pytest.raises(UserError, match="importing .* failed"):
        build_metric(f"{broken}:f")
    raising = _write(tmp_path, "raising.py", "def f(p, r):\n    return 1 / 0\n")
    with pytest.raises(CustomMetricError, match="ZeroDivisionError"):
        build_metric(f"{raising}:f").score("a", "b")
