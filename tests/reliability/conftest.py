"""Fixtures of the reliability tests (helpers are in cli_contract.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def not_utf8(tmp_path):
    """Write `text` as Latin-1 bytes with an invalid UTF-8 byte on line `line` (1-based)."""

    def write(name: str, text: str, bad_line: int = 1):
        lines = text.splitlines(keepends=True) or ["\n"]
        raw = b"".join(ln.encode() for ln in lines)
        pos = sum(len(ln.encode()) for ln in lines[: bad_line - 1])
        raw = raw[:pos] + b"# caf\xe9\n" + raw[pos:]  # Latin-1 e-acute: invalid UTF-8
        path = tmp_path / name
        path.write_bytes(raw)
        return path

    return write
