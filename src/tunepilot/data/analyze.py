"""One pass over a split: record checks, rendering, batched tokenization, token checks, and the facts the
dataset-level checks need. `validate` and `prepare_datasets` both run exactly this code.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tunepilot.data.checks.dataset import Labels, Ledger, duplicate_findings, length_findings
from tunepilot.data.checks.keys_json import JsonKeys
from tunepilot.data.checks.registry import RECORD_CHECKS, TOKEN_CHECKS, severity_of
from tunepilot.data.checks.shapes import shape_findings, unfinished_findings
from tunepilot.data.checks.tokens import (
    end_token_problem,
    special_token_in_text,
    template_marker_problems,
    token_context,
)
from tunepilot.data.formats import Problem
from tunepilot.data.records import Conversation, DataFinding, Example
from tunepilot.data.templates import Rendered, render, render_text
from tunepilot.data.tokenize import encode, label_batch

BATCH = 512
CHARS_PER_TOKEN = 4


@dataclass
class Analyzer:
    settings: object  # DataSettings
    tokenizer: object | None = None
    keep_examples: bool = False
    findings: list[DataFinding] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    labels: Labels = field(default_factory=Labels)
    json_keys: JsonKeys = field(default_factory=JsonKeys)
    records: int = 0
    dropped: int = 0
    truncated: int = 0
    tokens: int = 0  # after truncation: what trains
    trainable: int = 0
    _pending: list[tuple[Conversation, Rendered]] = field(default_factory=list)
    _ctx: object = None
    _pool: ThreadPoolExecutor | None = None
    _inflight: tuple | None = None
    _first: Example | None = None  # the first example with trainable tokens (end-of-turn check)

    def __post_init__(self):
        self._ctx = token_context(self.tokenizer, self.settings.cutoff_len)

    def add_all(self, conversations: Iterable[Conversation]) -> None:
        for conv in conversations:
            self.add(conv)
        self.flush()

    def add(self, conv: Conversation) -> None:
        self.records += 1
        for info, check in RECORD_CHECKS:
            for message in check(conv):
                self._emit(info.code, conv, message)
        self.labels.add(conv)
        self.json_keys.add(conv)
        rendered = self._render(conv)
        if self.tokenizer is None or rendered is None:
            plen = sum(len(m["content"]) for m in conv.prompt_messages()) if not conv.is_text else 0
            alen = len(conv.answer() or conv.text or "")
            self.ledger.add(conv, plen, alen)
            if self.tokenizer is None:
                self._estimate_truncation(conv, plen, alen)
                for message in special_token_in_text(conv, None, None, self._ctx):
                    self._emit("special_token_in_text", conv, message)
            return
        self._pending.append((conv, rendered))
        if len(self._pending) >= BATCH:
            self.flush(wait=False)

    def _estimate_truncation(self, conv: Conversation, plen: int, alen: int) -> None:
        """Without a tokenizer, truncation is estimated at CHARS_PER_TOKEN characters per token (English
        text with BPE vocabularies of 32k-150k), so that grossly overlong records are still caught."""
        cutoff_chars = self.settings.cutoff_len * CHARS_PER_TOKEN
        note = f"(estimated at {CHARS_PER_TOKEN} characters per token; pass --model for exact counts)"
        if plen >= cutoff_chars:
            self.dropped += 1
            self.truncated += 1
            self._emit(
                "truncated_to_zero",
                conv,
                f"the prompt alone exceeds cutoff_len={self.settings.cutoff_len} "
                f"tokens {note}; the record would be dropped",
            )
        elif plen + alen > cutoff_chars:
            self.truncated += 1
            self._emit(
                "truncated",
                conv,
                f"longer than cutoff_len={self.settings.cutoff_len} tokens {note}; the end of the answer would be cut",
            )

    def _render(self, conv: Conversation) -> Rendered | None:
        s = self.settings
        if self.tokenizer is None:
            return None
        try:
            if conv.is_text:
                return render_text(conv.text, self.tokenizer)
            return render(
                conv.messages,
                self.tokenizer,
                s.template,
                last_only=s.mask_history,
                train_on_prompt=s.train_on_prompt,
            )
        except Problem as p:
            self._emit(p.code, conv, p.message)
            return None

    def flush(self, wait: bool = True) -> None:
        """Send the pending batch to the tokenizer. The Rust tokenizer releases the GIL, so batch k is
        encoded on a worker thread (and its own threads) while this thread parses, checks and renders
        batch k+1; batches are finished strictly in order, so results are deterministic. Only the
        worker calls the tokenizer while a batch is in flight."""
        self._drain()
        if self._pending:
            batch, self._pending = self._pending, []
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunepilot-tokenize")
            self._inflight = (batch, self._pool.submit(encode, self.tokenizer, [r.text for _, r in batch]))
        if wait:
            self._drain()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _drain(self) -> None:
        if self._inflight is None:
            return
        (batch, future), self._inflight = self._inflight, None
        examples = label_batch([r for _, r in batch], future.result(), self.tokenizer, self.settings.cutoff_len)
        for (conv, rendered), ex in zip(batch, examples, strict=True):
            self._after_tokens(conv, rendered, ex)

    def _after_tokens(self, conv: Conversation, rendered: Rendered, ex: Example) -> None:
        ex.line, ex.source, ex.part = conv.line, conv.source, conv.part
        for info, check in TOKEN_CHECKS:
            for message in check(conv, rendered, ex, self._ctx):
                self._emit(info.code, conv, message)
        trainable = ex.trainable
        if self._first is None and trainable > 0 and not conv.is_text:
            self._first = ex
        # Lengths before truncation: outliers and percentiles show what cutoff_len would need.
        self.ledger.add(conv, ex.full_length - ex.full_trainable, ex.full_trainable)
        self.tokens += len(ex.input_ids)
        self.trainable += trainable
        self.truncated += ex.truncated
        if ex.truncated and trainable == 0:
            self.dropped += 1
            self._emit(
                "truncated_to_zero",
                conv,
                f"no answer token is left within cutoff_len={self.settings.cutoff_len}; the record is dropped",
            )
        elif self.keep_examples and trainable > 0:
            self.examples.append(ex)

    def _emit(self, code: str, conv: Conversation, message: str) -> None:
        self.findings.append(DataFinding(severity_of(code), code, conv.line, message, conv.source))

    def finish(self) -> list[DataFinding]:
        """Dataset-level findings (call after the last record)."""
        self.flush()
        table = self.ledger.table()
        unit = "tokens" if self.tokenizer is not None else "characters"
        out = duplicate_findings(table, self.ledger.sources) + length_findings(table, self.ledger.sources, unit)
        out += shape_findings(table, self.ledger.sources, self.ledger.shapes)
        out += unfinished_findings(table, self.ledger.sources)
        out += self._setup_findings()
        out += self.labels.findings() + self.json_keys.findings()
        out += self._rates(table)
        self.findings.extend(out)
        return out

    def _setup_findings(self) -> list[DataFinding]:
        """Once per run: does the tokenizer fit the template (markers, end-of-turn token)?"""
        if self.tokenizer is None or not self.ledger.sources:
            return []
        src, out = self.ledger.sources[0], []
        split = template_marker_problems(self.tokenizer, self.settings.template)
        if split:
            out.append(
                DataFinding(
                    "warning",
                    "template_tokens_not_special",
                    None,
                    f"template {self.settings.template!r}: {', '.join(split)} are not single tokens of this tokenizer",
                    src,
                )
            )
        problem = end_token_problem(self.tokenizer, self._first) if self._first is not None else None
        if problem:
            out.append(DataFinding("warning", "end_of_turn_not_eos", None, problem, src))
        return out

    def _rates(self, table: np.ndarray) -> list[DataFinding]:
        out, n = [], len(table)
        src = self.ledger.sources[0] if self.ledger.sources else ""
        if n == 0:
            return out
        if self.truncated > 0.05 * n:  # estimated from characters when there is no tokenizer
            out.append(
                DataFinding(
                    "warning",
                    "truncation_rate",
                    None,
                    f"{self.truncated} of {n} records "
                    f"({self.truncated / n:.0%}) exceed cutoff_len={self.settings.cutoff_len}; "
                    "raise cutoff_len or shorten them",
                    src,
                )
            )
        if self.tokens and self.trainable < 0.02 * self.tokens and not self.settings.train_on_prompt:
            share = self.trainable / self.tokens
            out.append(DataFinding("warning", "low_trainable_share", None, f"only {share:.1%} of tokens train", src))
        return out

    def stats(self) -> dict:
        table = self.ledger.table()
        out = {"records": self.records, "truncated": self.truncated, "dropped": self.dropped}
        if self.tokenizer is None:
            out["unit"] = "characters"
            out["prompt_length"] = _percentiles(table["plen"])
            out["answer_length"] = _percentiles(table["alen"])
            return out
        untruncated = table["plen"].astype(np.int64) + table["alen"]
        out.update(
            {
                "unit": "tokens",
                "tokens": self.tokens,
                "trainable_tokens": self.trainable,
                "trainable_share": round(self.trainable / max(1, self.tokens), 4),
                "length": _percentiles(untruncated),
                "prompt_length": _percentiles(table["plen"]),
                "answer_length": _percentiles(table["alen"]),
            }
        )
        return out


def _percentiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    p = np.percentile(x, [50, 90, 95, 99])
    return {
        "min": int(x.min()),
        "p50": float(p[0]),
        "p90": float(p[1]),
        "p95": float(p[2]),
        "p99": float(p[3]),
        "max": int(x.max()),
        "mean": round(float(x.mean()), 1),
    }
