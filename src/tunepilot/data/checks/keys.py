"""Normalisation and 64-bit keys of records, for duplicate, conflict and overlap checks."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from tunepilot.data.records import Conversation

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def hash64(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True
    )


def loose(text: str) -> str:
    """Case, width, whitespace and punctuation folded away: "What's 2+2?" == "whats 2 2"."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def light(text: str) -> str:
    """Case, width and whitespace folded, a final period dropped; signs and digits kept ("-5" != "5")."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(".!。")


def _join(messages: list[dict[str, str]], fold) -> str:
    return "\x1e".join(f"{m['role']}\x1f{fold(m['content'])}" for m in messages)


def record_keys(conv: Conversation) -> tuple[int, int, int, int, int]:
    """(exact, normalised, prompt, loose prompt, answer) keys; the last three are 0 for plain text.

    The prompt key folds case and whitespace only: the same question with different answers is
    a conflict. The loose prompt key also folds punctuation ("top up" vs "top-up"), which real
    data sets (BANKING77, Restaurant8k) contain with different labels on purpose or by
    annotation noise, so those are reported separately, as a warning."""
    if conv.is_text:
        return hash64(conv.text), hash64(loose(conv.text)), 0, 0, 0
    prompt = conv.prompt_messages()
    answer = conv.answer() or ""
    return (
        hash64(_join(conv.messages, str)),
        hash64(_join(conv.messages, loose)),
        hash64(_join(prompt, light)),
        hash64(_join(prompt, loose)),
        hash64(light(answer)),
    )
