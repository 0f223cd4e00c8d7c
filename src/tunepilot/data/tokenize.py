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


def _token_at(enc, b: int, char: int, n_chars: int, step: int) -> int | None:
    """The token covering `char`, searching forward (step 1) or backward (-1) over uncovered chars."""
    while 0 <= char < n_chars:
        t = enc.char_to_token(b, char)
        if t is not None:
            return t
        char += step
    return None


def tokenize_batch(rendered: Sequence[Rendered], tokenizer, cutoff_len: int | None) -> list[Example]:
    if not rendered:
        return []
    enc = tokenizer([r.text for r in rendered], add_special_tokens=False)
    bos = tokenizer.bos_token_id
    out = []
    for b, r in enumerate(rendered):
        ids = list(enc["input_ids"][b])
        labels = [IGNORE] * len(ids)
        n_chars = len(r.text)
        for start, end in r.spans:
            first = _token_at(enc, b, start, n_chars, 1)
            last = _token_at(enc, b, end - 1, n_chars, -1)
            if first is None or last is None or last < first:
                continue
            labels[first : last + 1] = ids[first : last + 1]
        if r.add_bos and bos is not None:
            ids.insert(0, bos)
            labels.insert(0, IGNORE)
        ex = Example(ids, labels)
        ex.full_length, ex.full_trainable = len(ids), ex.trainable
        out.append(ex)
    if cutoff_len:
        for ex in out:
            if len(ex.input_ids) > cutoff_len:
                ex.input_ids, ex.labels, ex.truncated = (
                    ex.input_ids[:cutoff_len],
                    ex.labels[:cutoff_len],
                    True,
                )
    return out
