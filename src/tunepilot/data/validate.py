"""`validate` as a pure function: stream a data file (and an eval file) through the same parsing,
rendering, tokenization and checks as training, and return every finding with statistics.

Memory: records are not kept; per record only fixed-size keys and lengths (see checks/dataset.py)
and the findings themselves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tunepilot.data.analyze import Analyzer
from tunepilot.data.checks.dataset import overlap_findings
from tunepilot.data.parse import ParseState, iter_split
from tunepilot.data.prepare import check_template
from tunepilot.data.records import SEVERITY_ORDER, DataFinding


@dataclass
class ValidationReport:
    findings: list[DataFinding]
    stats: dict
    format: str
    template: str | None

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    def counts(self) -> dict[str, dict[str, int]]:
        """{code: {"severity": ..., "count": n}}, errors first, then by count."""
        c = Counter((f.severity, f.code) for f in self.findings)
        ordered = sorted(c.items(), key=lambda kv: (SEVERITY_ORDER[kv[0][0]], -kv[1], kv[0][1]))
        return {code: {"severity": sev, "count": n} for (sev, code), n in ordered}


def _run_split(which: str, settings, tokenizer) -> tuple[Analyzer, ParseState, Counter]:
    state, parts = ParseState(), Counter()
    analyzer = Analyzer(settings, tokenizer)

    def counted():
        for conv in iter_split(settings, which, state):
            parts[conv.part] += 1
            yield conv

    analyzer.add_all(counted())
    analyzer.finish()
    return analyzer, state, parts


def mixture_stats(settings, parts: Counter) -> list[dict] | None:
    """Each dataset of a several-dataset data.train: its records and how the mix uses it (stacked:
    its share of an epoch and the passes over it that share means; phased: its phase)."""
    from tunepilot.data.sources import dataset_names

    names = dataset_names(settings.train)
    if len(names) < 2:
        return None
    records = [parts.get(i, 0) for i in range(len(names))]
    total = sum(records) or 1
    weights = settings.mix_weights or records
    out = []
    for i, (name, n) in enumerate(zip(names, records, strict=True)):
        row = {"name": name, "records": n}
        if settings.mix == "stacked":
            share = weights[i] / (sum(weights) or 1)
            row.update(share=round(share, 4), passes_per_epoch=round(share * total / n, 3) if n else None)
        else:
            row.update(phase=i + 1, steps=settings.phase_steps[i] if settings.phase_steps else None)
        out.append(row)
    return out


def validate_data(settings, tokenizer=None) -> ValidationReport:
    """Validate settings.train (and settings.eval): all records, ignoring max_samples and val_size."""
    check_template(settings, tokenizer)
    train, train_state, parts = _run_split("train", settings, tokenizer)
    findings = train_state.findings + train.findings
    stats = {"train": {**train.stats(), "records_read": train_state.records}, "eval": None}
    datasets = mixture_stats(settings, parts)
    if datasets:
        stats["train"].update(mix=settings.mix, datasets=datasets)
    if settings.eval:
        evals, eval_state, _ = _run_split("eval", settings, tokenizer)
        findings += eval_state.findings + evals.findings
        findings += overlap_findings(train.ledger.table(), evals.ledger.table(), evals.ledger.sources)
        stats["eval"] = {**evals.stats(), "records_read": eval_state.records}
    # Train before eval (files in the order read), then by line; file-level findings first.
    order = {src: i for i, src in reversed(list(enumerate(f.source for f in findings)))}
    findings.sort(key=lambda f: (order[f.source], f.line if f.line is not None else -1, SEVERITY_ORDER[f.severity]))
    template = settings.template if tokenizer is not None else None
    return ValidationReport(findings, stats, train_state.spec.name, template)
