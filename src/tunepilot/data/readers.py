"""File readers: JSONL, JSON (array), CSV/TSV, Parquet, a directory of one file type, or a saved
Hugging Face `datasets` dataset. Each yields `RawRecord`s one at a time, so a large JSONL, CSV,
Parquet or JSON-array file is read in memory bounded by its largest record.

File-level problems (missing, unreadable, empty, binary, unknown type, a directory of mixed types)
are usage errors (`UserError`, exit 2); a record that does not parse is a `RawRecord` with `error`
and becomes a finding, so every broken line is reported, not just the first.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tunepilot.data.records import RawRecord
from tunepilot.errors import UserError
from tunepilot.registry import register_once

Reader = Callable[[Path], Iterator[RawRecord]]
READERS: dict[str, Reader] = {}
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_SNIFF_BYTES = 8192


def register_data_reader(kind: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        register_once(READERS, kind, fn, "data reader")
        return fn

    return wrap


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """All records of a file or directory, in order (directories: files sorted by name)."""
    path = Path(path)
    for file, kind in resolve_files(path):
        yield from READERS[kind](file)


def resolve_files(path: Path) -> list[tuple[Path, str]]:
    """[(file, reader kind)]; raises UserError for anything that is not readable data."""
    if not path.exists():
        raise UserError(f"{path}: not found; give the path of a data file or directory")
    if path.is_dir():
        return _resolve_dir(path)
    return [(path, file_kind(path))]


def _resolve_dir(path: Path) -> list[tuple[Path, str]]:
    from tunepilot.data.sources import is_llamafactory_dir

    if is_llamafactory_dir(path):  # LLaMA-Factory's dataset_info.json names datasets; it is no saved dataset
        raise UserError(
            f"{path}: is a LLaMA-Factory dataset folder (its dataset_info.json names datasets); set "
            f"dataset: NAME[,NAME2] with dataset_dir: {path} in the config, or run "
            f"`tunepilot validate {path}` to check all of them"
        )
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return [(path, "hf_dataset")]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    data = [(p, EXTENSIONS[p.suffix.lower()]) for p in files if p.suffix.lower() in EXTENSIONS]
    if not data:
        raise UserError(
            f"{path}: directory holds no data files ({', '.join(sorted(EXTENSIONS))}) "
            "and is not a saved datasets dataset"
        )
    kinds = {k for _, k in data}
    if len(kinds) > 1:
        listing = ", ".join(f"{p.name} ({k})" for p, k in data[:8])
        raise UserError(
            f"{path}: directory mixes file types ({', '.join(sorted(kinds))}): {listing}; "
            "keep one type per directory or point at a single file"
        )
    for p, _ in data:
        file_kind(p)  # empty or binary files inside the directory are usage errors too
    return data


def file_kind(path: Path) -> str:
    """The reader for one file, from its extension, checked against its first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check permissions") from e
    if head.startswith(b"PAR1"):
        return "parquet"
    if not head.strip():
        raise UserError(f"{path}: file is empty; it holds no records")
    what = _binary_kind(head)
    if what is not None:
        hint = "save it as UTF-8" if what.startswith("UTF-16") else "give a JSONL/JSON/CSV/Parquet data file"
        raise UserError(f"{path}: is {what} (a binary file), not text data; {hint}")
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind == "parquet":
        raise UserError(f"{path}: has a .parquet name but is not a Parquet file (no PAR1 magic)")
    if kind is None:
        first = head.lstrip()[:1]
        if first in (b"{", b"["):
            return "jsonl" if first == b"{" else "json"
        raise UserError(
            f"{path}: unknown file type '{path.suffix or '(none)'}'; use .jsonl, .json, "
            ".csv, .tsv or .parquet (or a directory / saved datasets dataset)"
        )
    return kind


_MAGIC = {
    b"\x1f\x8b": "gzip-compressed data",
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"BZh": "bzip2-compressed data",
    b"\xfd7zXZ": "xz-compressed data",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data",
    b"SQLite format 3": "an SQLite database",
    b"\xff\xfe": "UTF-16 text",
    b"\xfe\xff": "UTF-16 text",
}


def _binary_kind(head: bytes) -> str | None:
    """What a file is when it is not text; None for text (even with a stray NUL or bad byte,
    which become findings on their lines)."""
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    odd = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return "binary data" if odd > len(head) * 0.05 else None


def decode_bytes(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", errors="replace"), f"invalid UTF-8 at byte {e.start} ({e.reason})"


MAX_FIELD_LINES = 200  # a quoted field spanning more lines than this is taken for an unclosed quote


def _decoded_lines(f, bad_lines: set[int]) -> Iterator[str]:
    """Physical lines decoded one by one, so an undecodable line is reported on its own line."""
    for n, raw in enumerate(f, start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text, bad = decode_bytes(raw)
        if bad:
            bad_lines.add(n)
        yield text


def _read_delimited(path: Path, delimiter: str) -> Iterator[RawRecord]:
    src = str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    bad_lines: set[int] = set()
    with path.open("rb") as f:
        # strict: a quote left open at the end of the file is an error, not one giant last field.
        reader = csv.reader(_decoded_lines(f, bad_lines), delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise UserError(f"{path}:1: the CSV header cannot be parsed ({e}); fix the first line") from e
        if header is None:
            return
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise UserError(f"{path}:1: the CSV header repeats column names {dup}; rename them")
        prev = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                start, prev = prev + 1, reader.line_num
                yield RawRecord(start, src, error=f"CSV syntax: {e} (an unclosed or stray quote?)")
                continue
            start, prev = prev + 1, reader.line_num
            record = _csv_record(header, row, start, prev, src, bad_lines)
            if record is not None:
                yield record


def _csv_record(header: list[str], row: list[str], start: int, end: int, src: str, bad: set[int]):
    if not row or all(not c.strip() for c in row):
        return None
    if any(n in bad for n in range(start, end + 1)):
        return RawRecord(start, src, error="invalid UTF-8 in this row; save the file as UTF-8", code="invalid_encoding")
    if end - start > MAX_FIELD_LINES:
        return RawRecord(
            start,
            src,
            error=f"a quoted field runs from line {start} to {end}: probably an "
            "unclosed quote (the rows inside it were not read)",
        )
    if len(row) != len(header):
        return RawRecord(
            start,
            src,
            error=f"CSV row has {len(row)} fields, header has {len(header)}",
            code="csv_field_count",
        )
    return RawRecord(start, src, dict(zip(header, row, strict=True)))


@register_data_reader("csv")
def read_csv(path: Path) -> Iterator[RawRecord]:
    return _read_delimited(path, _delimiter(path))


def _delimiter(path: Path) -> str:
    """ "," unless the header line has none and has ";" (European spreadsheets) or a tab."""
    with path.open("rb") as f:
        header = f.readline()
    if b"," in header:
        return ","
    return next((d for d in (";", "\t", "|") if d.encode() in header), ",")


@register_data_reader("tsv")
def read_tsv(path: Path) -> Iterator[RawRecord]:
    return _read_delimited(path, "\t")


@register_data_reader("parquet")
def read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: not a readable Parquet file ({e})") from e
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for value in batch.to_pylist():
            row += 1
            yield RawRecord(row, str(path), value)


@register_data_reader("hf_dataset")
def read_hf_dataset(path: Path, split: str | None = None) -> Iterator[RawRecord]:
    """A `datasets` dataset saved with save_to_disk; a DatasetDict gives its `train` split."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a broken folder
        raise UserError(f"{path}: not a readable saved datasets dataset ({e})") from e
    if isinstance(ds, DatasetDict):
        name = split or ("train" if "train" in ds else sorted(ds)[0])
        ds = ds[name]
    for row, value in enumerate(ds, start=1):
        yield RawRecord(row, str(path), value)
