"""Batched tokenization with label masking and cutoff truncation.

Rendered texts are tokenized in batches by the fast tokenizer (Rust, parallel) with no special
tokens added (templates carry their own; BOS is prepended where the template asks). Trainable
character spans become token ranges through `char_to_token`: a token trains when it overlaps a
trainable span. Labels are -100 elsewhere. Truncation keeps the first `cutoff_len` tokens; an
example left with no trainable token is dropped by the caller and reported, never trained silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunepilot.data.records import Example
from tunepilot.data.templates import Rendered

IGNORE = -100


def _token_at(enc, char: int, n_chars: int, step: int) -> int | None:
    """The token covering `char`, searching forward (step 1) or backward (-1) over uncovered chars."""
    while 0 <= char < n_chars:
        t = enc.char_to_token(char)
        if t is not None:
            return t
        char += step
    return None


def encode(tokenizer, texts: list[str]) -> list:
    """`tokenizers.Encoding`s (ids + character offsets). The Rust backend of a fast tokenizer is called
    directly: the transformers wrapper converts every batch to padded Python structures first, which
    costs about a quarter of the time here and gives the same ids (tests compare the two)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # A tokenizer.json may carry truncation/padding settings that the wrapper resets per call; the
    # backend would apply them silently, so such tokenizers go through the wrapper.
    if backend is not None and backend.truncation is None and backend.padding is None:
        return backend.encode_batch(texts, add_special_tokens=False)
    batch = tokenizer(texts, add_special_tokens=False, truncation=False, padding=False)
    if not getattr(batch, "encodings", None):
        raise TypeError("tunepilot needs a fast (Rust) tokenizer for label masking by character offsets")
    return batch.encodings


def label(r: Rendered, enc, bos: int | None) -> Example:
    ids = enc.ids
    labels = [IGNORE] * len(ids)
    trainable = 0
    n_chars = len(r.text)
    for start, end in r.spans:
        first = _token_at(enc, start, n_chars, 1)
        last = _token_at(enc, end - 1, n_chars, -1)
        if first is None or last is None or last < first:
            continue
        labels[first : last + 1] = ids[first : last + 1]
        trainable += last + 1 - first
    if r.add_bos and bos is not None:
        ids = [bos, *ids]
        labels.insert(0, IGNORE)
    return Example(ids, labels, trainable, full_length=len(ids), full_trainable=trainable)


def truncate(ex: Example, cutoff_len: int) -> None:
    if len(ex.input_ids) > cutoff_len:
        ex.input_ids, ex.labels, ex.truncated = ex.input_ids[:cutoff_len], ex.labels[:cutoff_len], True
        ex.trainable = sum(1 for t in ex.labels if t != IGNORE)


def tokenize_batch(rendered: Sequence[Rendered], tokenizer, cutoff_len: int | None) -> list[Example]:
    if not rendered:
        return []
    return label_batch(rendered, encode(tokenizer, [r.text for r in rendered]), tokenizer, cutoff_len)


def label_batch(rendered: Sequence[Rendered], encodings: list, tokenizer, cutoff_len: int | None) -> list[Example]:
    bos = tokenizer.bos_token_id
    out = [label(r, enc, bos) for r, enc in zip(rendered, encodings, strict=True)]
    if cutoff_len:
        for ex in out:
            truncate(ex, cutoff_len)
    return out
