"""The shapes every data module speaks: a raw record from a file, a canonical conversation, a finding.

`line` is the 1-based line where the record starts in its file (JSONL, JSON array, CSV), or the
1-based row number for column stores (Parquet, a saved `datasets` dataset) which have no lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class DataFinding:
    severity: Severity
    code: str
    line: int | None  # None for file- or dataset-level findings
    message: str
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "line": self.line,
            "message": self.message,
            "source": self.source,
        }

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass
class RawRecord:
    """One record as parsed from a file; `error` (with the parser's position) when it did not parse."""

    line: int
    source: str
    value: Any = None
    error: str | None = None
    code: str = "malformed_line"  # the finding code when `error` is set


@dataclass
class Conversation:
    """A record in canonical form: chat messages ({"role", "content"}), or `text` for pretraining."""

    line: int
    messages: list[dict[str, str]]
    source: str = ""
    text: str | None = None  # set (and messages empty) for the plain-text format
    part: int = 0  # which dataset of data.train (0-based, in the order named)

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def prompt_messages(self) -> list[dict[str, str]]:
        """Messages up to (not including) the last assistant turn: what a generation is asked for."""
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=None)
        return self.messages[:last] if last is not None else list(self.messages)

    def answer(self) -> str | None:
        """The last assistant turn's content (the reference answer)."""
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return None


@dataclass
class Example:
    """A tokenized training example; `labels` is -100 where the model is not trained."""

    input_ids: list[int]
    labels: list[int]
    trainable: int = 0  # tokens whose label is not -100
    line: int = 0
    source: str = ""
    part: int = 0  # which dataset of data.train (0-based, in the order named)
    truncated: bool = False
    full_length: int = 0  # tokens before cutoff_len truncation
    full_trainable: int = 0  # trainable tokens before truncation
