"""Answer shapes: does this answer end the way (nearly) all the others do?

A shape is coarse on purpose: `json` (parses as a JSON object/array), `broken_json` (starts like
JSON but does not parse), `marker:####` (the last line starts with a symbol run, as GSM8K's
"#### 72"), `label:answer` (the last line starts with "Answer:"), or `plain`. When one non-plain
shape covers at least 90% of 10+ answers, the others are reported: a GSM8K answer without its
"#### N" line, or a free-text answer in a JSON-extraction set, is a defect a reader would miss.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from tunepilot.data.checks.registry import declare
from tunepilot.data.records import DataFinding

declare(
    "unfinished_answer",
    "warning",
    "An answer ends in the middle of a word or sentence (a letter, comma or colon) where 90%+ of the others "
    "end with punctuation or a digit: cut off upstream?",
    "dataset",
)
declare(
    "answer_format_outlier",
    "warning",
    "An answer does not end like 90%+ of the others (e.g. no '#### N' "
    "line where all others have one, or not valid JSON in a JSON-answer set).",
    "dataset",
)

_MARKER = re.compile(r"[^\w\s]{2,}")
_LABEL = re.compile(r"([A-Za-z][A-Za-z ]{0,20}):")
DOMINANT = 0.9
MIN_RECORDS = 10
_FINISHED = re.compile(r"[\W\d_]$")  # ends with punctuation, a digit or a closing bracket/quote/symbol


def answer_shape(answer: str | None) -> str:
    if answer is None:
        return ""
    s = answer.strip()
    if s[:1] in ("{", "["):
        try:
            json.loads(s)
            return "json"
        except ValueError:
            return "broken_json"
    last = s.splitlines()[-1].strip() if s else ""
    m = _MARKER.match(last)
    if m:
        return f"marker:{m.group()}"
    m = _LABEL.match(last)
    return f"label:{m.group(1).lower()}" if m else "plain"


def _describe(shape: str) -> str:
    if shape in ("json", "broken_json"):
        return "valid JSON" if shape == "json" else "broken JSON"
    kind, _, value = shape.partition(":")
    return {"marker": f"a last line starting '{value}'", "label": f"a last line starting '{value}:'"}.get(
        kind, "plain text"
    )


def shape_findings(t: np.ndarray, sources: list[str], names: list[str]) -> list[DataFinding]:
    shapes = t["shape"]
    known = shapes[shapes >= 0]
    if len(known) < MIN_RECORDS:
        return []
    counts = Counter(known.tolist())
    top, n = counts.most_common(1)[0]
    if names[top] == "plain" or n < DOMINANT * len(known) or n == len(known):
        return []
    share = n / len(known)
    out = []
    for i in np.flatnonzero((shapes >= 0) & (shapes != top)):
        out.append(
            DataFinding(
                "warning",
                "answer_format_outlier",
                int(t["line"][i]),
                f"{share:.0%} of answers end with {_describe(names[top])}; this one has {_describe(names[shapes[i]])}",
                sources[t["src"][i]],
            )
        )
    return out


def answer_finished(answer: str | None) -> int:
    """1 when the answer ends like a finished text, 0 when it ends with a letter/comma/colon, -1 n/a."""
    if not answer or not answer.strip():
        return -1
    tail = answer.rstrip()
    return 1 if _FINISHED.search(tail) and tail[-1] not in ",;:-" else 0


def unfinished_findings(t: np.ndarray, sources: list[str]) -> list[DataFinding]:
    done = t["finished"]
    known = done[done >= 0]
    if len(known) < MIN_RECORDS or known.mean() < DOMINANT or known.mean() == 1:
        return []
    share = known.mean()
    return [
        DataFinding(
            "warning",
            "unfinished_answer",
            int(t["line"][i]),
            f"the answer ends mid-sentence; {share:.0%} of answers end with punctuation or a digit",
            sources[t["src"][i]],
        )
        for i in np.flatnonzero(done == 0)
    ]
