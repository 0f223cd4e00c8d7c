"""JSON readers: JSONL line by line, and JSON arrays element by element with each element's start line.

Both parse strictly: a key repeated in one object (the json module silently keeps the last) and the
non-JSON constants NaN/Infinity are findings on their line, not silently accepted values.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tunepilot.data.readers import decode_bytes, register_data_reader
from tunepilot.data.records import RawRecord
from tunepilot.errors import UserError


class DuplicateKey(ValueError):
    pass


class BadConstant(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that refuses a repeated key (json keeps the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"key {dup!r} appears twice in one object; only the last value would be kept")
    return obj


def _reject_constant(name: str) -> None:
    raise BadConstant(f"invalid JSON: {name} is not a JSON value (write null or a string)")


STRICT = json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_reject_constant)
PLAIN = json.JSONDecoder()


def parse_json_text(text: str, line: int, src: str) -> RawRecord:
    """One JSON value as a RawRecord, with the parser's position or the strictness problem."""
    try:
        return RawRecord(line, src, STRICT.decode(text))
    except json.JSONDecodeError as e:
        return RawRecord(line, src, error=f"invalid JSON at column {e.colno}: {e.msg}")
    except DuplicateKey as e:
        return RawRecord(line, src, error=str(e), code="duplicate_key")
    except BadConstant as e:
        return RawRecord(line, src, error=str(e))
    except RecursionError:
        return RawRecord(line, src, error="invalid JSON: nested too deeply")


def _more_follows(f) -> bool:
    """Is there anything but whitespace after the current position (trailing blank lines are fine)?"""
    pos = f.tell()
    rest = f.read(65536)
    f.seek(pos)
    return bool(rest.strip())


def max_record_bytes() -> int:
    """The per-record size cap: TUNEPILOT_MAX_RECORD_BYTES, default 8 MiB (about 2M tokens of text,
    far past any cutoff_len). A longer line is a finding, read past in chunks, never held whole."""
    value = os.environ.get("TUNEPILOT_MAX_RECORD_BYTES", "")
    try:
        return max(1024, int(value)) if value.strip() else DEFAULT_MAX_RECORD_BYTES
    except ValueError as e:
        raise UserError(f"TUNEPILOT_MAX_RECORD_BYTES={value!r}: give a number of bytes, e.g. 8388608") from e


DEFAULT_MAX_RECORD_BYTES = 8 << 20


def _bounded_lines(f, cap: int) -> Iterator[bytes | None]:
    """Lines of a binary file, each at most `cap` bytes; None for a longer line (skipped in chunks)."""
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # the rest of the oversized line, a chunk at a time
            raw = f.readline(1 << 20)
        yield None


@register_data_reader("jsonl")
def read_jsonl(path: Path) -> Iterator[RawRecord]:
    src = str(path)
    cap = max_record_bytes()
    with path.open("rb") as f:
        for n, raw in enumerate(_bounded_lines(f, cap), start=1):
            if raw is None:
                message = f"record is larger than {cap} bytes; shorten or split it (TUNEPILOT_MAX_RECORD_BYTES)"
                yield RawRecord(n, src, error=message, code="record_too_large")
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text, bad = decode_bytes(raw)
            if not text.strip():
                # A blank line is no record; reported (as a warning) because strict JSONL readers fail on it.
                if _more_follows(f):
                    yield RawRecord(n, src, error="blank line (no record)", code="blank_line")
                continue
            if bad:
                yield RawRecord(n, src, error=bad, code="invalid_encoding")
                continue
            yield parse_json_text(text, n, src)


CHUNK = 1 << 20  # characters read at a time from a JSON array file


class _Window:
    """A sliding window of decoded text over a file: records before the window are dropped, so a
    JSON array streams in memory bounded by the largest record (plus one chunk)."""

    def __init__(self, path: Path, f=None, text: str = ""):
        self.path, self.f, self.text = path, f, text
        self.base_line = 1  # line number of text[0]
        self.eof = f is None
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def more(self) -> bool:
        """Read another chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        try:
            self.text += self._decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path}: invalid UTF-8 ({e.reason}); save the file as UTF-8") from e
        self.eof = not chunk
        return True

    def drop_before(self, i: int) -> None:
        self.base_line += self.text.count("\n", 0, i)
        self.text = self.text[i:]

    def skip_ws(self, i: int) -> int:
        while True:
            i = _skip_ws(self.text, i)
            if i < len(self.text) or not self.more():
                return i


@register_data_reader("json")
def read_json(path: Path) -> Iterator[RawRecord]:
    """A JSON array, streamed element by element with each element's start line; or {"key": [records]}
    (read whole), or several top-level objects (read as JSONL)."""
    with path.open("rb") as f:
        window = _Window(path, f)
        window.more()
        window.text = window.text.lstrip("\ufeff")
        i = window.skip_ws(0)
        if window.text.startswith("["):
            window.drop_before(i + 1)
            yield from _json_array(window, str(path))
            return
        if not window.text.startswith("{", i):
            raise UserError(f"{path}: expected a JSON array of records at the top level")
        while window.more():
            pass
    yield from _json_object_top(path, window.text, i)


def _json_object_top(path: Path, text: str, i: int) -> Iterator[RawRecord]:
    # One object that is {"data": [...]} is a wrapped array; several objects are really JSONL.
    try:
        obj, end = PLAIN.raw_decode(text, i)
    except json.JSONDecodeError as e:
        yield RawRecord(e.lineno, str(path), error=f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")
        return
    if _skip_ws(text, end) < len(text):
        yield from read_jsonl(path)
        return
    lists = [k for k, v in obj.items() if isinstance(v, list)]
    if len(lists) == 1 and len(obj) <= 3:
        start = text.index("[", text.index(json.dumps(lists[0]), i))
        window = _Window(path, text=text)
        window.drop_before(start + 1)
        yield from _json_array(window, str(path))
        return
    yield RawRecord(text.count("\n", 0, i) + 1, str(path), obj)


def _json_array(window: _Window, src: str) -> Iterator[RawRecord]:
    i = 0
    while True:
        i = window.skip_ws(i)
        if i >= len(window.text):
            line = window.base_line + window.text.count("\n")
            yield RawRecord(line, src, error="invalid JSON: the file ends inside the array (no closing ']')")
            return
        if window.text[i] == "]":
            return
        window.drop_before(i)
        record, end = _element(window, src)
        yield record
        if end is None:
            return  # after a syntax error the array cannot be resynchronised
        i = window.skip_ws(end)
        if window.text.startswith(",", i):
            i += 1
        elif not window.text.startswith("]", i):
            line = window.base_line + window.text.count("\n", 0, i)
            yield RawRecord(line, src, error=f"invalid JSON at line {line}: expected ',' or ']' after a record")
            return


def _element(window: _Window, src: str) -> tuple[RawRecord, int | None]:
    """The element at the start of the window: (record, end) or (error record, None)."""
    line = window.base_line
    while True:
        try:
            value, end = STRICT.raw_decode(window.text, 0)
            if end >= len(window.text) and window.more():
                continue  # a number cut at the window edge ("12" of "123"): read on and parse again
            return RawRecord(line, src, value), end
        except (DuplicateKey, BadConstant) as e:
            try:
                _, end = PLAIN.raw_decode(window.text, 0)
            except json.JSONDecodeError as syntax:
                if window.more():
                    continue
                return RawRecord(line, src, error=f"invalid JSON: {syntax.msg} (records after it were not read)"), None
            code = "duplicate_key" if isinstance(e, DuplicateKey) else "malformed_line"
            return RawRecord(line, src, error=str(e), code=code), end
        except json.JSONDecodeError as e:
            if window.more():
                continue
            at = window.base_line + e.lineno - 1
            msg = f"invalid JSON at line {at} column {e.colno}: {e.msg} (records after it were not read)"
            # At the end of the file the parser's position says nothing: name the record's first line.
            at = line if e.pos >= len(window.text.rstrip()) else at
            return RawRecord(at, src, error=msg), None


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i
