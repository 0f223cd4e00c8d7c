"""Structured answers: keys of JSON-object answers that (almost) no other answer uses.

In an extraction set (Restaurant8k's slots, contract fields) the answer keys form a small schema;
a key seen once or twice while the others are seen 10+ times is usually a typo ("peopel") or a
field from another task.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tunepilot.data.checks.registry import declare
from tunepilot.data.records import Conversation, DataFinding

declare(
    "rare_json_key",
    "warning",
    "A key of a JSON-object answer occurs once or twice while the typical key "
    "occurs 10x as often: a typo or a field from another schema.",
    "dataset",
)

MAX_KEYS = 500  # more distinct keys than this: free-form JSON, not a schema


@dataclass
class JsonKeys:
    counts: Counter = field(default_factory=Counter)
    first: dict[str, tuple[str, int]] = field(default_factory=dict)
    answers: int = 0
    overflow: bool = False

    def add(self, conv: Conversation) -> None:
        answer = None if conv.is_text else conv.answer()
        if self.overflow or not answer or not answer.lstrip().startswith("{"):
            return
        try:
            obj = json.loads(answer)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        self.answers += 1
        for key in obj:
            self.counts[key] += 1
            self.first.setdefault(key, (conv.source, conv.line))
        if len(self.counts) > MAX_KEYS:
            self.overflow, self.counts, self.first = True, Counter(), {}

    def findings(self) -> list[DataFinding]:
        if self.overflow or self.answers < 10:
            return []
        regular = [n for n in self.counts.values() if n > 2]
        if not regular:
            return []
        median = float(np.median(regular))
        frequent = [k for k, n in self.counts.items() if n > 2]
        out = []
        for key, n in self.counts.items():
            if n <= 2 and median >= 5 * n:
                near = difflib.get_close_matches(key, frequent, n=1, cutoff=0.7)
                hint = f"; a typo of '{near[0]}'?" if near else ""
                src, line = self.first[key]
                out.append(
                    DataFinding(
                        "warning",
                        "rare_json_key",
                        line,
                        f"answer key '{key}' occurs {n}x (median {median:.0f} per key){hint}",
                        src,
                    )
                )
        return out
