"""File types, directories and saved datasets, and the file-level usage errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunepilot.config import DataSettings
from tunepilot.data import load_conversations
from tunepilot.data.readers import read_records
from tunepilot.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ROWS = [{"instruction": f"Double {i}.", "input": "", "output": str(2 * i)} for i in range(6)]


def conversations(path: Path, **settings) -> list:
    return load_conversations(DataSettings(train=str(path), **settings), "train")


def answers(path: Path, **settings) -> list[str]:
    return [c.answer() for c in conversations(path, **settings)]


def test_same_records_from_every_file_type(tmp_path, jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    expected = [r["output"] for r in ROWS]
    (tmp_path / "array.json").write_text(json.dumps(ROWS, indent=2))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    header = "instruction\tinput\toutput\n"
    (tmp_path / "rows.tsv").write_text(header + "".join(f"{r['instruction']}\t\t{r['output']}\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "hf"))
    parts = tmp_path / "parts"
    parts.mkdir()
    jsonl(ROWS[:3], "parts/a.jsonl")
    jsonl(ROWS[3:], "parts/b.jsonl")
    for name in ["array.json", "wrapped.json", "rows.tsv", "rows.parquet", "hf", "parts"]:
        assert answers(tmp_path / name) == expected, name
    assert answers(jsonl(ROWS)) == expected


def test_line_numbers_per_file_type(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps(ROWS, indent=2))
    lines = [r.line for r in read_records(tmp_path / "array.json")]
    text = (tmp_path / "array.json").read_text().splitlines()
    assert all(text[n - 1].strip() == "{" for n in lines) and len(lines) == len(ROWS)
    from tunepilot.data.parse import ParseState, iter_conversations

    convs = list(
        iter_conversations(
            str(FIXTURES / "labels.csv"), "auto", {"prompt": "text", "response": "label"}, None, ParseState()
        )
    )
    assert convs[0].line == 2 and convs[-1].line == 44 and convs[-2].line == 42  # 42-43: a two-line field


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("empty.jsonl", "empty"),
        ("blank.jsonl", "empty"),
        ("image.jsonl", "binary"),
        ("unknown_keys.jsonl", "unknown format"),
        ("not_json.jsonl", "no record parses"),
        ("fake.parquet", "not a Parquet file"),
        ("notes.txt", "unknown file type"),
        ("ambiguous.csv", "ambiguous format"),
        ("mixed_dir", "mixes file types"),
        ("mixed_formats", "mixes record formats"),
        ("does_not_exist.jsonl", "not found"),
    ],
)
def test_usage_errors(name, needle):
    with pytest.raises(UserError) as err:
        conversations(FIXTURES / name)
    assert needle in str(err.value) and err.value.code == 2
    assert name.split(".")[0] in str(err.value)  # the message names the file


def test_unknown_format_and_template_names(jsonl):
    path = jsonl(ROWS)
    with pytest.raises(UserError, match="unknown format 'alpacca'"):
        conversations(path, format="alpacca")
    with pytest.raises(UserError, match="unknown field 'answer_col'"):
        conversations(path, columns={"answer_col": "output"})


def test_format_detection_votes_past_a_broken_first_record(jsonl):
    path = jsonl([{"instruction": "Only an instruction."}, *ROWS])
    report_convs = conversations_or_findings(path)
    assert report_convs == ("alpaca", 1)


def conversations_or_findings(path: Path) -> tuple[str, int]:
    from tunepilot.data.validate import validate_data

    report = validate_data(DataSettings(train=str(path)))
    return report.format, sum(f.code == "missing_field" for f in report.findings)


def test_question_answer_detection_is_announced(shared_data):
    from tunepilot.data.validate import validate_data

    report = validate_data(DataSettings(train=str(shared_data / "gsm8k" / "test.jsonl")))
    note = next(f for f in report.findings if f.code == "format_detected")
    assert "question" in note.message and "answer" in note.message


def test_text_category_csv_is_detected_as_prompt_completion(shared_data):
    convs = conversations(shared_data / "banking77" / "test.csv", max_samples=3)
    assert convs[0].messages[-1] == {"role": "assistant", "content": "card_arrival"}
    assert convs[0].messages[0]["role"] == "user" and convs[0].line == 2


@pytest.mark.parametrize("name", ["sharegpt_structure.json", "spans.json"])
def test_json_arrays_stream_in_small_windows(name, monkeypatch):
    """Reading 7 characters at a time gives the same records and lines as reading the whole file."""
    from tunepilot.data import jsonl

    whole = [(r.line, r.value, r.error) for r in read_records(FIXTURES / name)]
    monkeypatch.setattr(jsonl, "CHUNK", 7)
    assert [(r.line, r.value, r.error) for r in read_records(FIXTURES / name)] == whole


def test_json_array_edge_cases(tmp_path, monkeypatch):
    from tunepilot.data import jsonl

    monkeypatch.setattr(jsonl, "CHUNK", 3)
    (tmp_path / "a.json").write_text('[\n  12345,\n  {"a": 1, "a": 2},\n  {"b": NaN}\n]\n')
    got = [(r.line, r.value, r.code if r.error else None) for r in read_records(tmp_path / "a.json")]
    assert got == [(2, 12345, None), (3, None, "duplicate_key"), (4, None, "malformed_line")]
    (tmp_path / "b.json").write_text('[\n  {"a": 1},\n  {"a": 2\n')
    got = [(r.line, r.error is None) for r in read_records(tmp_path / "b.json")]
    assert got == [(2, True), (3, False)]


def test_semicolon_csv(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("instruction;output\nName a colour.;Red, say\nName a shape.;Square\n")
    assert answers(path) == ["Red, say", "Square"]


def test_broken_csv_header_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'"prompt"x,completion\nq,a\n')
    with pytest.raises(UserError, match="header cannot be parsed"):
        conversations(path)
