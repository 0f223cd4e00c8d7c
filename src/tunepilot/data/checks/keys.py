"""Normalisation and 64-bit keys of records, for duplicate, conflict and overlap checks.

Keys are Python's built-in string hashes: 64-bit, fast, and stable within one process (train and
eval are keyed in the same run). Which record of a duplicate group is "first" depends only on file
order, never on the hash values, so findings are deterministic across runs.
"""

from __future__ import annotations

import re
import unicodedata

from tunepilot.data.records import Conversation

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _nfkc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def loose(text: str) -> str:
    """Case, width, whitespace and punctuation folded away: "What's 2+2?" == "whats 2 2"."""
    return " ".join(_NON_WORD.sub(" ", _nfkc(text).casefold()).split())


def light(text: str) -> str:
    """Case, width and whitespace folded, a final period dropped; signs and digits kept ("-5" != "5")."""
    return " ".join(_nfkc(text).casefold().split()).rstrip(".!。")


def record_keys(conv: Conversation) -> tuple[int, int, int, int, int]:
    """(exact, normalised, prompt, loose prompt, answer) keys; the last three are 0 for plain text.

    The prompt key folds case and whitespace only: the same question with different answers is
    a conflict. The loose prompt key also folds punctuation ("top up" vs "top-up"), which real
    data sets (BANKING77, Restaurant8k) contain with different labels on purpose or by
    annotation noise, so those are reported separately, as a warning."""
    if conv.is_text:
        return hash(conv.text), hash(loose(conv.text)), 0, 0, 0
    msgs = conv.messages
    roles = tuple(m["role"] for m in msgs)
    contents = tuple(m["content"] for m in msgs)
    folded = tuple(loose(c) for c in contents)
    last = max((i for i, r in enumerate(roles) if r == "assistant"), default=len(msgs))
    prompt_light = tuple(light(c) for c in contents[:last])
    answer = light(contents[last]) if last < len(msgs) else ""
    return (
        hash((roles, contents)) or 1,
        hash((roles, folded)) or 1,
        hash((roles[:last], prompt_light)) or 1,
        hash((roles[:last], folded[:last])) or 1,
        hash(answer),
    )
