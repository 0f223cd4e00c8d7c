"""Text normalisation shared by the metrics (SQuAD-style: case, punctuation, articles, spaces)."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, punctuation and English articles removed, whitespace collapsed.

    Punctuation becomes a space rather than vanishing so "card_arrival" and "card arrival" agree.
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCT)
    return _SPACES.sub(" ", _ARTICLES.sub(" ", text)).strip()


def tokens(text: str) -> list[str]:
    return normalize_text(text).split()
