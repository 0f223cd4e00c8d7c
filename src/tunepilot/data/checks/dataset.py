"""Dataset-level checks: duplicates, conflicting answers, label balance, length outliers, overlap.

Per record only a few fixed-size numbers are kept (four 64-bit keys, the line, three lengths: about
60 bytes), in numpy chunks; the groups are found by sorting at the end. Memory therefore grows with
the number of records, never with their size: a 10 GB file of 10 M records needs ~0.6 GB.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tunepilot.data.checks.keys import light, loose, record_keys
from tunepilot.data.checks.registry import declare
from tunepilot.data.checks.shapes import answer_finished, answer_shape
from tunepilot.data.records import Conversation, DataFinding

declare("exact_duplicate", "warning", "The record repeats an earlier one exactly: it is trained twice.", "dataset")
declare(
    "normalized_duplicate",
    "warning",
    "The record equals an earlier one up to case, whitespace and punctuation.",
    "dataset",
)
declare(
    "conflicting_duplicate",
    "error",
    "The same prompt (up to case and whitespace) appears with a different answer: the model is taught both.",
    "dataset",
)
declare(
    "conflicting_near_duplicate",
    "warning",
    'A prompt equal to an earlier one up to punctuation ("top up" / "top-up") has a different answer: '
    "check the labels.",
    "dataset",
)
declare(
    "label_imbalance",
    "warning",
    "Classification-shaped data whose most frequent label is more than 10x as common as the rarest.",
    "dataset",
)
declare(
    "rare_label",
    "warning",
    "A label of classification-shaped data occurs once or twice while a typical label occurs 5x as often: "
    "often a typo of another label.",
    "dataset",
)
declare("label_variant", "warning", "Two labels differ only in case, spacing or punctuation.", "dataset")
declare(
    "length_outlier",
    "warning",
    "A prompt or answer is far longer or shorter than the rest (>8x off the median and >5 robust deviations).",
    "dataset",
)
declare(
    "train_eval_overlap",
    "warning",
    "An eval record's prompt also appears in the training data: eval scores are inflated (a warning, "
    "since public splits such as BANKING77's share a few texts).",
    "dataset",
)

MAX_LABELS = 1000  # more distinct answers than this: not classification-shaped


@dataclass
class Ledger:
    """Fixed-size facts per record, appended in numpy chunks."""

    rows: list[tuple] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dtype = np.dtype(
        [
            ("exact", "i8"),
            ("norm", "i8"),
            ("prompt", "i8"),
            ("ploose", "i8"),
            ("answer", "i8"),
            ("line", "i8"),
            ("src", "i4"),
            ("plen", "i4"),
            ("alen", "i4"),
            ("shape", "i4"),  # index into `shapes`; -1 for plain-text records
            ("finished", "i1"),  # the answer ends like a finished text: 1, mid-sentence: 0, n/a: -1
        ]
    )
    shapes: list[str] = field(default_factory=list)
    _shape_ids: dict[str, int] = field(default_factory=dict)

    def add(self, conv: Conversation, plen: int, alen: int) -> None:
        if not self.sources or self.sources[-1] != conv.source:
            self.sources.append(conv.source)
        answer = None if conv.is_text else conv.answer()
        shape = -1 if conv.is_text else self._shape_id(answer_shape(answer))
        self.rows.append(
            (*record_keys(conv), conv.line, len(self.sources) - 1, plen, alen, shape, answer_finished(answer))
        )
        if len(self.rows) >= 65536:
            self._flush()

    def _shape_id(self, shape: str) -> int:
        if shape not in self._shape_ids:
            self._shape_ids[shape] = len(self.shapes)
            self.shapes.append(shape)
        return self._shape_ids[shape]

    def _flush(self) -> None:
        if self.rows:
            self.chunks.append(np.array(self.rows, dtype=self.dtype))
            self.rows = []

    def table(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=self.dtype)


def _firsts(keys: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    group_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))]
    out = np.empty_like(order)
    out[order] = group_first
    return out


def duplicate_findings(t: np.ndarray, sources: list[str]) -> list[DataFinding]:
    """Exact duplicates first, then conflicting answers, then normalised duplicates (one code a record)."""
    if len(t) == 0:
        return []
    rows = np.arange(len(t))
    exact_first, norm_first, prompt_first = _firsts(t["exact"]), _firsts(t["norm"]), _firsts(t["prompt"])
    loose_first = _firsts(t["ploose"])
    exact = exact_first != rows
    chat = t["prompt"] != 0
    conflict = ~exact & chat & (prompt_first != rows) & (t["answer"][prompt_first] != t["answer"])
    near = ~exact & ~conflict & chat & (loose_first != rows) & (t["answer"][loose_first] != t["answer"])
    norm = ~exact & ~conflict & ~near & (norm_first != rows)
    out = []
    for i in np.flatnonzero(exact | conflict | near | norm):
        if exact[i]:
            code, msg = "exact_duplicate", f"exact duplicate of {_where(t, sources, exact_first[i], i)}"
        elif conflict[i]:
            code = "conflicting_duplicate"
            msg = f"same prompt as {_where(t, sources, prompt_first[i], i)} but a different answer"
        elif near[i]:
            code = "conflicting_near_duplicate"
            msg = (
                f"prompt differs from {_where(t, sources, loose_first[i], i)} only in punctuation, "
                "but the answer differs"
            )
        else:
            code = "normalized_duplicate"
            msg = f"duplicate of {_where(t, sources, norm_first[i], i)} up to case/whitespace/punctuation"
        out.append(_f(code, t, sources, int(i), msg))
    return out


def _where(t: np.ndarray, sources: list[str], j: int, i: int) -> str:
    same = t["src"][j] == t["src"][i]
    return f"line {t['line'][j]}" if same else f"{sources[t['src'][j]]}:{t['line'][j]}"


def _f(code: str, t: np.ndarray, sources: list[str], i: int, message: str) -> DataFinding:
    from tunepilot.data.checks.registry import severity_of

    return DataFinding(severity_of(code), code, int(t["line"][i]), message, sources[t["src"][i]])


def length_findings(t: np.ndarray, sources: list[str], unit: str) -> list[DataFinding]:
    """Lengths more than 8x and 5 robust deviations (MAD of log length) off the median. Prompts are
    checked on the long side only: short prompts ("Hi", "7") are normal in chat data, while a very
    short answer among long ones (a bare "72" among worked solutions) is a defect."""
    out = []
    for column, what, both_sides in (("plen", "prompt", False), ("alen", "answer", True)):
        x = t[column].astype(float)
        ok = x > 0
        if ok.sum() < 5:
            continue
        logs = np.log(x[ok])
        med = float(np.median(logs))
        spread = max(5 * 1.4826 * float(np.median(np.abs(logs - med))), np.log(8))
        off = (np.abs(logs - med) if both_sides else logs - med) > spread
        for i in np.flatnonzero(ok)[off]:
            message = f"{what} is {int(x[i])} {unit}; the median is {np.exp(med):.0f}"
            out.append(_f("length_outlier", t, sources, int(i), message))
    return out


@dataclass
class Labels:
    """Answer counts while they look like class labels (few distinct, short)."""

    counts: Counter = field(default_factory=Counter)
    first: dict[str, tuple[str, int]] = field(default_factory=dict)
    total: int = 0
    words: int = 0
    overflow: bool = False

    def add(self, conv: Conversation) -> None:
        answer = conv.answer()
        if self.overflow or answer is None:
            return
        self.total += 1
        self.words += len(answer.split())
        self.counts[answer] += 1
        self.first.setdefault(answer, (conv.source, conv.line))
        if len(self.counts) > MAX_LABELS:
            self.overflow, self.counts, self.first = True, Counter(), {}

    def shaped(self) -> bool:
        n = len(self.counts)
        return (
            not self.overflow
            and self.total >= 20
            and 2 <= n <= max(2, self.total // 5)
            and self.words / self.total <= 6
        )

    def findings(self) -> list[DataFinding]:
        if not self.shaped():
            return []
        out = self._variants()
        common = self.counts.most_common()
        # Labels seen once or twice are reported as rare_label (likely typos), not as imbalance.
        regular = [c for c in common if c[1] > 2] or common
        top, low = regular[0], regular[-1]
        if top[1] > 10 * low[1]:
            out.append(
                DataFinding(
                    "warning",
                    "label_imbalance",
                    None,
                    f"{len(common)} labels; '{top[0]}' has {top[1]} records, '{low[0]}' only {low[1]}",
                    self.first[top[0]][0],
                )
            )
        # A label is rare when it occurs once or twice while a typical label (the median of those seen
        # 3+ times, so that several typos do not drag it down) occurs at least 5x as often.
        median = float(np.median([n for _, n in regular]))
        for label, n in common:
            if n <= 2 and median >= 5 * n:
                near = difflib.get_close_matches(label, [c for c, k in common if k > 2], n=1, cutoff=0.75)
                hint = f"; a typo of '{near[0]}'?" if near else ""
                src, line = self.first[label]
                out.append(
                    DataFinding(
                        "warning",
                        "rare_label",
                        line,
                        f"label '{label}' occurs {n}x (median {median:.0f} per label){hint}",
                        src,
                    )
                )
        return out

    def _variants(self) -> list[DataFinding]:
        groups: dict[str, list[str]] = {}
        for label in self.counts:
            groups.setdefault(loose(label), []).append(label)
        out = []
        for labels in groups.values():
            if len(labels) < 2:
                continue
            labels.sort(key=lambda s: -self.counts[s])
            for minor in labels[1:]:
                src, line = self.first[minor]
                out.append(
                    DataFinding(
                        "warning",
                        "label_variant",
                        line,
                        f"label {minor!r} ({self.counts[minor]}x) "
                        f"differs from {labels[0]!r} ({self.counts[labels[0]]}x) only in case, "
                        "spacing or punctuation",
                        src,
                    )
                )
        return out


def overlap_findings(train: np.ndarray, evals: np.ndarray, sources: list[str]) -> list[DataFinding]:
    """Eval records whose prompt (plain text: whole text) is in train, vectorised over the eval table."""
    chat = train["prompt"] != 0
    keys, answers = (
        np.r_[train["prompt"][chat], train["norm"][~chat]],
        np.r_[train["answer"][chat], np.zeros(int((~chat).sum()), dtype="i8")],
    )
    lookup = dict(zip(keys.tolist(), answers.tolist(), strict=True))
    eval_keys = np.where(evals["prompt"] != 0, evals["prompt"], evals["norm"])
    out = []
    for i in np.flatnonzero(np.isin(eval_keys, keys)):
        same = lookup[int(eval_keys[i])] == int(evals["answer"][i])
        what = "with the same answer" if same else "with a different answer"
        out.append(_f("train_eval_overlap", evals, sources, int(i), f"this eval prompt is also in train {what}"))
    return out


__all__ = ["Ledger", "Labels", "duplicate_findings", "length_findings", "overlap_findings", "light"]
