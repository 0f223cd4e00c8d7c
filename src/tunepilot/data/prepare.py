"""The training data path: load, split, check, render, tokenize, truncate, pack.

    prepare_datasets(settings, tokenizer, seed) -> PreparedData(train, eval, stats)

Order: read train (first `max_samples` records in file order), split `val_size` off it with `seed`
when no eval file is given, cap eval at `max_eval_samples`; run the same checks as `validate` and
refuse data with error findings (UserError, exit 2, every problem as file:line code message);
then tokenize with label masking. Records whose answer is cut away by cutoff_len are dropped and
counted. The result is the same lists for the same settings and seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from tunepilot.data.analyze import Analyzer
from tunepilot.data.batching import pack
from tunepilot.data.checks.dataset import overlap_findings
from tunepilot.data.parse import ParseState, iter_split
from tunepilot.data.records import Conversation, DataFinding
from tunepilot.data.templates import TEMPLATES, template_names
from tunepilot.errors import ExitCode, UserError

MAX_LISTED = 30  # problems listed in one UserError; the count of the rest is given


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict] | None
    stats: dict
    findings: list[DataFinding]


def check_template(settings, tokenizer=None) -> None:
    if settings.format == "text":  # plain text is tokenized as it is: no template is used
        return
    if settings.template == "auto" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "data.template: auto uses the model's chat template, but this tokenizer has none "
            "(a base model?); "
            f"set data.template to one of {', '.join(sorted(TEMPLATES))}"
        )
    if settings.template != "auto" and settings.template not in TEMPLATES:
        raise UserError(
            f"data.template: unknown template {settings.template!r}; use one of {', '.join(template_names())}"
        )


def check_template_fit(settings, tokenizer) -> None:
    """Refuse (exit 2) a named template whose markers this tokenizer splits into ordinary text, the
    `template_tokens_not_special` finding of `validate`: trained as is, the model would learn to
    write "<|eot_id|>" as characters and never stop. `allow_template_mismatch: true` trains anyway."""
    if tokenizer is None or settings.format == "text" or settings.template == "auto":
        return
    if settings.allow_template_mismatch:
        return
    from tunepilot.data.checks.tokens import template_marker_problems

    split = template_marker_problems(tokenizer, settings.template)
    if split:
        raise UserError(
            f"data.template: template {settings.template!r}: {', '.join(split)} are not single tokens of this "
            "tokenizer (template_tokens_not_special), so the model would see them as plain text; use the model's "
            "own template (template: auto) or one whose markers it has, or set allow_template_mismatch: true "
            "to train anyway"
        )


def read_split(which: str, settings, limit: int | None) -> tuple[list[Conversation], ParseState]:
    """data.train or data.eval (`which`): a file, or the named datasets of dataset_info.json."""
    state = ParseState()
    return list(iter_split(settings, which, state, limit)), state


def split_conversations(settings, seed: int) -> tuple[list[Conversation], list[Conversation] | None, list[DataFinding]]:
    """(train, eval or None, structural findings) after max_samples / val_size / max_eval_samples."""
    train, state = read_split("train", settings, settings.max_samples)
    findings = list(state.findings)
    evals = None
    if settings.eval:
        evals, eval_state = read_split("eval", settings, settings.max_eval_samples)
        findings += eval_state.findings
    elif settings.val_size > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = min(len(train) - 1, max(1, round(len(train) * settings.val_size)))
        held = set(order[:n_eval])
        evals = [c for i, c in enumerate(train) if i in held][: settings.max_eval_samples]
        train = [c for i, c in enumerate(train) if i not in held]
    return train, evals, findings


def load_conversations(settings, split: Literal["train", "eval"], seed: int = 42) -> list[Conversation]:
    """Canonical records of a split (the eval split is the eval file, or the val_size hold-out made
    with `seed`: pass the training seed to get the same hold-out as training). Structural errors
    raise UserError like prepare_datasets."""
    train, evals, findings = split_conversations(settings, seed)
    _raise_errors(findings)
    return train if split == "train" else (evals or [])


def _raise_errors(findings: list[DataFinding]) -> None:
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return
    problems = [f"{f.where()}: {f.code}: {f.message}" for f in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        problems.append(f"... and {len(errors) - MAX_LISTED} more; run `tunepilot validate` for the full list")
    raise UserError(
        f"data: {len(errors)} error(s) in the data; fix them (or remove the records) and retry",
        ExitCode.USAGE,
        problems,
    )


def prepare_datasets(settings, tokenizer, seed: int) -> PreparedData:
    check_template(settings, tokenizer)
    check_template_fit(settings, tokenizer)
    train, evals, findings = split_conversations(settings, seed)
    train_an = Analyzer(settings, tokenizer, keep_examples=True)
    train_an.add_all(train)
    train_an.finish()
    findings += train_an.findings
    eval_an = None
    if evals is not None:
        eval_an = Analyzer(settings, tokenizer, keep_examples=True)
        eval_an.add_all(evals)
        eval_an.finish()
        findings += eval_an.findings
        if settings.eval:
            findings += overlap_findings(train_an.ledger.table(), eval_an.ledger.table(), eval_an.ledger.sources)
    _raise_errors(findings)
    if not train_an.examples:
        raise UserError(
            f"{settings.train}: no training example is left (all {train_an.records} were dropped); "
            "raise data.cutoff_len"
        )
    train_rows = _rows(train_an, settings.cutoff_len if settings.packing else None)
    # Eval examples stay one per row so per-example metrics mean something; only train is packed.
    eval_rows = _rows(eval_an, None) if eval_an is not None else None
    stats = {"train": train_an.stats(), "eval": eval_an.stats() if eval_an else None}
    if settings.packing:
        stats["train"]["packed_sequences"] = len(train_rows)
    return PreparedData(train_rows, eval_rows, stats, findings)


def _rows(analyzer: Analyzer, pack_to: int | None) -> list[dict]:
    """One row per example, each tagged with its dataset (`part`) and grouped by it in the order
    named (a mixture's data order needs each dataset's rows: `engines/plan.py`). Packing never joins
    examples of two datasets."""
    by_part: dict[int, list[dict]] = {}
    for ex in analyzer.examples:
        by_part.setdefault(ex.part, []).append({"input_ids": ex.input_ids, "labels": ex.labels, "part": ex.part})
    groups = [by_part[p] for p in sorted(by_part)]
    return [row for rows in groups for row in (_packed(rows, pack_to) if pack_to else rows)]


def _packed(rows: list[dict], cutoff_len: int) -> list[dict]:
    return [{**row, "part": rows[0]["part"]} for row in pack(rows, cutoff_len)]
