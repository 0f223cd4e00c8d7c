"""The per-record size cap of the JSONL reader (TUNEPILOT_MAX_RECORD_BYTES): a finding, not a blow-up."""

from __future__ import annotations

import json

from tunepilot.data.checks.registry import CODES, severity_of
from tunepilot.data.jsonl import read_jsonl


def test_a_record_above_the_cap_is_a_record_too_large_finding(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPILOT_MAX_RECORD_BYTES", "1024")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b" * 5000}) + "\n")
    records = list(read_jsonl(path))
    assert [r.code for r in records if r.error] == ["record_too_large"]
    assert records[1].line == 2 and "1024 bytes" in records[1].error
    assert "record_too_large" in CODES and severity_of("record_too_large") == "error"
