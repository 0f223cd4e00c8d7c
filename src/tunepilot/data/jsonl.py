"""JSON readers: JSONL line by line, and JSON arrays element by element with each element's start line.

Both parse strictly: a key repeated in one object (the json module silently keeps the last) and the
non-JSON constants NaN/Infinity are findings on their line, not silently accepted values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tunepilot.data.readers import decode_bytes, register_reader
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


@register_reader("jsonl")
def read_jsonl(path: Path) -> Iterator[RawRecord]:
    src = str(path)
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
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


@register_reader("json")
def read_json(path: Path) -> Iterator[RawRecord]:
    """A JSON array (or {"key": [records]}), element by element with each element's start line."""
    src = str(path)
    text, bad = decode_bytes(path.read_bytes())
    if bad:
        raise UserError(f"{path}: {bad}; save the file as UTF-8")
    text = text.lstrip("\ufeff")
    dec = PLAIN
    i = _skip_ws(text, 0)
    if text.startswith("{", i):
        yield from _json_object_top(path, text, dec, i)
        return
    if not text.startswith("[", i):
        raise UserError(f"{path}: expected a JSON array of records at the top level")
    yield from _json_array(src, text, dec, i + 1)


def _json_object_top(path: Path, text: str, dec: json.JSONDecoder, i: int) -> Iterator[RawRecord]:
    # One object that is {"data": [...]} is a wrapped array; several objects are really JSONL.
    try:
        obj, end = dec.raw_decode(text, i)
    except json.JSONDecodeError as e:
        yield RawRecord(e.lineno, str(path), error=f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")
        return
    if _skip_ws(text, end) < len(text):
        yield from read_jsonl(path)
        return
    lists = [k for k, v in obj.items() if isinstance(v, list)]
    if len(lists) == 1 and len(obj) <= 3:
        start = text.index("[", text.index(json.dumps(lists[0]), i))
        yield from _json_array(str(path), text, dec, start + 1)
        return
    yield RawRecord(text.count("\n", 0, i) + 1, str(path), obj)


def _json_array(src: str, text: str, dec: json.JSONDecoder, i: int) -> Iterator[RawRecord]:
    line, pos = 1 + text.count("\n", 0, i), i
    while True:
        i = _skip_ws(text, i)
        if text.startswith("]", i):
            return
        line += text.count("\n", pos, i)
        pos = i
        try:
            value, end = STRICT.raw_decode(text, i)
            record = RawRecord(line, src, value)
        except (DuplicateKey, BadConstant) as e:
            # A valid-syntax element with a repeated key or NaN: report it and go on after it.
            value, end = dec.raw_decode(text, i)
            code = "duplicate_key" if isinstance(e, DuplicateKey) else "malformed_line"
            record = RawRecord(line, src, error=str(e), code=code)
        except json.JSONDecodeError as e:
            # The array cannot be resynchronised after a syntax error: report it and stop.
            yield RawRecord(
                e.lineno,
                src,
                error=f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg} (records after it were not read)",
            )
            return
        yield record
        i = _skip_ws(text, end)
        if text.startswith(",", i):
            i += 1
        elif not text.startswith("]", i):
            ln = 1 + text.count("\n", 0, i)
            yield RawRecord(ln, src, error=f"invalid JSON at line {ln}: expected ',' or ']' after a record")
            return


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i
