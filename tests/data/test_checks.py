"""Every check on hand-made defective files: one defect per line; assert the line and the code, and that
clean lines raise nothing."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tunepilot.config import DataSettings
from tunepilot.data.checks.registry import CODES
from tunepilot.data.validate import validate_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def by_line(report) -> dict[int | None, set[str]]:
    out: dict[int | None, set[str]] = defaultdict(set)
    for f in report.findings:
        out[f.line].add(f.code)
    return out


def check_file(name: str, expected: dict[int, str | set[str]], clean: list[int], tokenizer=None, **settings):
    report = validate_data(DataSettings(train=str(FIXTURES / name), **settings), tokenizer)
    assert {f.code for f in report.findings} <= set(CODES)  # every emitted code is declared
    found = by_line(report)
    for line, codes in expected.items():
        codes = {codes} if isinstance(codes, str) else codes
        assert codes <= found[line], f"{name}:{line}: expected {codes}, found {found.get(line)}"
    for line in clean:
        assert not found.get(line), f"{name}:{line} is clean but got {found[line]}"
    return report


def test_alpaca_structure():
    expected = {
        2: "malformed_line",
        3: "wrong_top_level_type",
        4: "missing_field",
        5: "wrong_type",
        6: "empty_assistant_turn",
        7: "empty_field",
        8: "duplicate_key",
        9: "malformed_line",
        10: "missing_field",
        11: "wrong_type",
        13: "wrong_type",
        14: "empty_assistant_turn",
    }
    report = check_file("alpaca_structure.jsonl", expected, clean=[1, 12, 15])
    assert report.format == "alpaca"
    assert all(f.severity == "error" for f in report.findings if f.line in expected)
    assert "column" in next(f.message for f in report.findings if f.line == 2)  # the parser's position


def test_messages_structure():
    expected = {
        2: "unknown_role",
        3: "bad_turn_order",
        4: "bad_turn_order",
        5: "empty_assistant_turn",
        6: "no_final_assistant_turn",
        7: "wrong_type",
        8: "missing_field",
        9: "wrong_type",
        10: "bad_turn_order",
        12: "empty_field",
        13: "wrong_type",
    }
    check_file("messages_structure.jsonl", expected, clean=[1, 11, 14, 15])


def test_sharegpt_json_array_reports_element_start_lines():
    expected = {8: "unknown_role", 14: "missing_field", 27: "bad_turn_order", 33: "wrong_top_level_type"}
    report = check_file("sharegpt_structure.json", expected, clean=[2, 20, 34])
    assert report.format == "sharegpt"


def test_text_quality_with_tokenizer(tok):
    expected = {
        2: "control_characters",
        3: "replacement_character",
        4: "mojibake",
        5: "invisible_characters",
        6: "placeholder_value",
        7: "template_leftover",
        8: "html_markup",
        9: "answer_equals_prompt",
        10: "refusal",
        11: "repetition",
        12: "surrounding_whitespace",
        13: "special_token_in_text",
        16: "control_characters",
        17: "mojibake",
        18: "placeholder_value",
    }
    check_file("text_quality.jsonl", expected, clean=[1, 14, 15, 19], tokenizer=tok)
    # Without a tokenizer the common chat-template control tokens are still caught.
    check_file("text_quality.jsonl", {13: "special_token_in_text"}, clean=[1, 14, 15, 19])


def test_encoding_defects():
    check_file("encoding.jsonl", {2: "invalid_encoding", 3: "control_characters"}, clean=[1, 4])


def test_duplicates_and_conflicts():
    expected = {
        2: "exact_duplicate",
        3: "normalized_duplicate",
        4: "conflicting_duplicate",
        5: "conflicting_near_duplicate",
        8: "conflicting_duplicate",
        10: "normalized_duplicate",
    }
    report = check_file("duplicates.jsonl", expected, clean=[1, 6, 7, 9])
    conflict = next(f for f in report.findings if f.line == 4)
    assert conflict.severity == "error" and "line 1" in conflict.message
    assert [f.code for f in report.findings if f.line is None] == ["format_detected"]


def test_classification_labels_csv():
    expected = {
        38: {"label_variant", "rare_label"},
        39: "rare_label",
        40: "csv_field_count",
        41: "empty_assistant_turn",
    }
    report = check_file(
        "labels.csv", expected, clean=[*range(2, 38), 42, 44], columns={"prompt": "text", "response": "label"}
    )
    assert "positive" in next(f.message for f in report.findings if f.line == 39)  # typo hint


def test_label_imbalance(tmp_path):
    rows = ["text,label"] + [f"good review {i},pos" for i in range(60)] + [f"bad review {i},neg" for i in range(4)]
    path = tmp_path / "imbalanced.csv"
    path.write_text("\n".join(rows) + "\n")
    report = validate_data(DataSettings(train=str(path), columns={"prompt": "text", "response": "label"}))
    assert [f.code for f in report.findings if f.code == "label_imbalance"] == ["label_imbalance"]
    balanced = validate_data(
        DataSettings(train=str(FIXTURES / "labels.csv"), columns={"prompt": "text", "response": "label"})
    )
    assert not any(f.code == "label_imbalance" for f in balanced.findings)


def test_spans(tok):
    expected = {3: "bad_span", 5: "bad_span", 7: "wrong_type", 8: "wrong_type"}
    report = check_file("spans.json", expected, clean=[2, 4, 6], tokenizer=tok)
    assert report.format == "spans"


def test_lengths_truncation_and_outliers(tok, jsonl):
    rows = [{"prompt": f"Question number {i} about apples?", "completion": f"Answer {i} is apples."} for i in range(30)]
    rows[10] = {"prompt": "Tell me about apples " * 40, "completion": "Apples are fruit."}  # answer cut away
    rows[20] = {"prompt": "Short?", "completion": "Apples " * 60}  # answer partly cut; long answer
    report = validate_data(DataSettings(train=str(jsonl(rows)), cutoff_len=96), tok)
    found = by_line(report)
    assert "truncated_to_zero" in found[11] and "length_outlier" in found[11]
    assert "truncated" in found[21] and "length_outlier" in found[21]
    assert report.stats["train"]["dropped"] == 1 and report.stats["train"]["truncated"] == 2
    assert all(not found[i] for i in range(1, 31) if i not in (11, 21))
    high = validate_data(DataSettings(train=str(jsonl(rows)), cutoff_len=40), tok)
    assert any(f.code == "truncation_rate" for f in high.findings)


def test_template_render_failure_and_altered_answer(tok, jsonl):
    import copy

    path = jsonl([{"prompt": "Spell it", "completion": "abc"}, {"prompt": "Again", "completion": "def"}])
    dropping = copy.deepcopy(tok)
    dropping.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n"
        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    report = validate_data(DataSettings(train=str(path)), dropping)
    assert {f.line: f.code for f in report.findings} == {
        1: "template_render_failure",
        2: "template_render_failure",
    }
    upper = copy.deepcopy(tok)
    upper.chat_template = tok.chat_template.replace("message['content']", "message['content'] | upper")
    report = validate_data(DataSettings(train=str(path)), upper)
    assert {f.line for f in report.findings if f.code == "template_alters_answer"} == {1, 2}


def test_train_eval_overlap(jsonl):
    train = jsonl([{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(5)], "train.jsonl")
    evals = jsonl([{"question": "Q9?", "answer": "A9"}, {"question": "q2?", "answer": "other"}], "eval.jsonl")
    report = validate_data(DataSettings(train=str(train), eval=str(evals)))
    hits = [f for f in report.findings if f.code == "train_eval_overlap"]
    assert [(f.line, f.source) for f in hits] == [(2, str(evals))]
    assert "different answer" in hits[0].message


def test_every_declared_code_is_exercised_by_a_test():
    """Guards the registry against codes nobody tests (the list below names the untested on purpose)."""
    tested = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        text = path.read_text()
        tested |= {code for code in CODES if f'"{code}"' in text}
    untested = set(CODES) - tested
    # no_trainable_tokens guards against tokenizers that drop the answer's characters: no sane one does.
    assert untested <= {"no_trainable_tokens"}, untested


@pytest.mark.parametrize(
    "name",
    [
        "gsm8k/train.jsonl",
        "gsm8k/test.jsonl",
        "restaurant8k/train_0.json",
        "restaurant8k/test.json",
        "banking77/train.csv",
        "banking77/test.csv",
    ],
)
def test_real_data_has_no_errors(name, shared_data, smol_tok):
    report = validate_data(DataSettings(train=str(shared_data / name)), smol_tok)
    assert report.errors == 0, [f for f in report.findings if f.severity == "error"][:5]
    assert report.stats["train"]["records"] > 1000


def test_misc_markup_blank_lines_and_symbol_answers():
    expected = {
        2: "blank_line",
        4: "template_markup",
        5: "no_word_characters",
        6: "template_markup",
        8: "unbroken_text",
    }
    check_file("misc.jsonl", expected, clean=[1, 3, 7, 9])


def test_csv_encoding_and_unclosed_quote():
    check_file("latin1.csv", {3: "invalid_encoding", 6: "malformed_line"}, clean=[2, 4, 5])


def test_truncation_is_estimated_without_a_tokenizer(jsonl):
    rows = [{"prompt": "Short question?", "completion": "Short answer."} for _ in range(3)]
    rows[1] = {"prompt": "x " * 300, "completion": "cut away"}  # 600 chars = ~150 tokens > 100
    rows[2] = {"prompt": "Question?", "completion": "word " * 100}  # answer partly cut
    report = validate_data(DataSettings(train=str(jsonl(rows)), cutoff_len=100))
    found = by_line(report)
    assert "truncated_to_zero" in found[2] and "truncated" in found[3] and not found[1] - {"exact_duplicate"}
    assert "estimated" in next(f.message for f in report.findings if f.line == 2)
    assert any(f.code == "truncation_rate" for f in report.findings)  # 2 of 3 records


def test_answers_that_do_not_end_like_the_rest():
    report = check_file(
        "math_answers.jsonl",
        {7: "answer_format_outlier", 15: {"answer_format_outlier", "length_outlier"}},
        clean=[1, 2, 6, 8, 14, 16, 24],
    )
    assert "####" in next(f.message for f in report.findings if f.line == 7)
    check_file(
        "json_answers.jsonl", {10: "answer_format_outlier", 18: "answer_format_outlier"}, clean=[1, 9, 11, 17, 19, 22]
    )


def test_tokenizer_fit_checks(tok, jsonl):
    import copy

    path = jsonl(
        [{"prompt": "Name a colour.", "completion": "Red."}, {"prompt": "Name a shape.", "completion": "Square."}]
    )
    llama3 = validate_data(DataSettings(train=str(path), template="llama3"), tok)
    split = [f for f in llama3.findings if f.code == "template_tokens_not_special"]
    assert len(split) == 1 and "<|eot_id|>" in split[0].message and split[0].line is None
    chatml = validate_data(DataSettings(train=str(path), template="chatml"), tok)
    assert not chatml.findings
    other_eos = copy.deepcopy(tok)
    other_eos.eos_token = "<|endoftext|>"
    report = validate_data(DataSettings(train=str(path)), other_eos)
    assert [f.code for f in report.findings] == ["end_of_turn_not_eos"]
    assert "<|im_end|>" in report.findings[0].message


def test_docs_list_every_code():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    assert [code for code in CODES if f"| `{code}` |" not in docs] == []


def test_unknown_tokens_with_a_word_level_tokenizer(jsonl):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tunepilot.testing import CHATML_TEMPLATE

    words = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>", "user", "assistant", "name", "a", "colour", "red"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    path = jsonl(
        [
            {"prompt": "name a colour", "completion": "red"},
            {"prompt": "name a colour", "completion": "red"},
            {"prompt": "name a shape", "completion": "red"},
        ]
    )
    report = validate_data(DataSettings(train=str(path)), tok)
    assert {f.line for f in report.findings if f.code == "unknown_tokens"} == {3}
    row = prepare_rows(path, tok)[0]
    assert tok.decode([t for t in row["labels"] if t != -100]) == "red <|im_end|>"


def prepare_rows(path, tokenizer):
    from tunepilot.data import prepare_datasets

    return prepare_datasets(DataSettings(train=str(path)), tokenizer, seed=0).train


def test_low_trainable_share(tok, jsonl):
    rows = [{"prompt": f"Read this: {'apples and pears ' * 60} Question {i}?", "completion": "Yes."} for i in range(10)]
    report = validate_data(DataSettings(train=str(jsonl(rows))), tok)
    assert [f.code for f in report.findings if f.line is None] == ["low_trainable_share"]
    assert report.stats["train"]["trainable_share"] < 0.02


def test_answers_cut_mid_sentence():
    check_file(
        "unfinished.jsonl",
        {5: "unfinished_answer", 9: "unfinished_answer", 16: "unfinished_answer"},
        clean=[1, 2, 3, 4, 6, 8, 10, 30],
    )


def test_rare_keys_in_json_answers():
    report = check_file("json_keys.jsonl", {7: "rare_json_key", 14: "rare_json_key"}, clean=[1, 6, 8, 13, 20])
    assert "people" in next(f.message for f in report.findings if f.line == 7)
