"""Score a model on eval examples: render prompts, generate, score, aggregate.

`evaluate_model` is the one entry point for `tunepilot evaluate`, for the trainer at eval points
(best checkpoint by metric) and for the sweep (the value reported to the pruner). It takes a
loaded model, so the caller decides about adapters, devices and subsets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError
from tunepilot.evaluate.examples import EvalExample, with_shots
from tunepilot.evaluate.generate import generate
from tunepilot.evaluate.metrics import (
    BadReference,
    Metric,
    MetricContext,
    Scored,
    build_metric,
    canonical_name,
)
from tunepilot.evaluate.settings import EvalSettings
from tunepilot.io import atomic_write_text


@dataclass
class RecordResult:
    source: str
    prompt: str
    reference: str
    prediction: str
    score: float
    extracted: str | None = None
    note: str | None = None


@dataclass
class EvalScores:
    metric: str  # the metric's name: the key of `value` in `metrics`
    value: float  # the objective
    direction: str  # "maximize" or "minimize"
    metrics: dict[str, float]  # every aggregate number of the metric
    n: int  # records scored
    seconds: float  # generation + scoring wall time
    records: list[RecordResult] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "direction": self.direction,
            "metrics": self.metrics,
            "n": self.n,
            "seconds": round(self.seconds, 3),
        }


def resolve_labels(settings: EvalSettings, examples: Sequence[EvalExample]) -> tuple[str, ...]:
    """Allowed answers: evaluate.labels, else evaluate.labels_file, else the distinct references."""
    if settings.labels:
        return tuple(settings.labels)
    if settings.labels_file:
        return read_labels(settings.labels_file)
    return tuple(sorted({e.reference.strip() for e in examples}))


def read_labels(path: str | Path) -> tuple[str, ...]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluate.labels_file: {path} not found; give a JSON list or a file with one label a line")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON in labels file ({e.msg})") from e
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or not all(isinstance(x, str) for x in labels):
        raise UserError(f"{path}: expected a non-empty list of label strings")
    return tuple(labels)


def metric_for(settings: EvalSettings, examples: Sequence[EvalExample]) -> Metric:
    needs_labels = canonical_name(settings.metric) == "accuracy"
    labels = resolve_labels(settings, examples) if needs_labels else ()
    return build_metric(settings.metric, MetricContext(labels=labels))


@dataclass(frozen=True)
class _TemplateChoice:
    template: str  # what render_prompt reads from the data settings
    format: str = "chat"  # eval prompts are always conversations, so a template is always needed


def render_prompts(
    tokenizer, examples: Sequence[EvalExample], shots: Sequence[EvalExample] = (), template: str = "auto"
) -> list[str]:
    """Each prompt rendered as training renders it (the model's chat template, or the named
    data.template), ending where the assistant's answer starts."""
    from tunepilot.data.prepare import check_template
    from tunepilot.data.templates import render_prompt

    choice = _TemplateChoice(template)
    check_template(choice, tokenizer)
    # render_prompt cuts at the last assistant turn; few-shot answers are assistant turns too, so
    # an empty final answer marks where the prompt ends.
    answer_slot = {"role": "assistant", "content": ""}
    return [render_prompt([*with_shots(e, shots), answer_slot], tokenizer, choice) for e in examples]


def score_predictions(metric: Metric, examples: Sequence[EvalExample], predictions: Sequence[str]) -> list[Scored]:
    """Per-record scores; a bad reference or a failing custom metric names the record."""
    scored = []
    for example, prediction in zip(examples, predictions, strict=True):
        try:
            scored.append(metric.score(prediction, example.reference))
        except BadReference as e:
            raise UserError(f"{example.source or 'eval record'}: {e}; fix the record or choose another metric") from e
        except UserError as e:
            raise UserError(f"{example.source or 'eval record'}: {e.message}", e.code, e.problems) from e
    return scored


def evaluate_model(
    model,
    tokenizer,
    examples: Sequence[EvalExample],
    settings: EvalSettings,
    shots: Sequence[EvalExample] = (),
    template: str = "auto",
    metric: Metric | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalScores:
    """Generate greedy answers for `examples` and score them with `settings.metric`.

    Pass a prebuilt `metric` when calling at every eval point (a custom metric is imported once).
    """
    if not examples:
        raise UserError("no eval records to score; check the eval data file and --limit")
    metric = metric or metric_for(settings, examples)
    start = time.perf_counter()
    prompts = render_prompts(tokenizer, examples, shots, template)
    answers = generate(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size, progress)
    predictions = [a.text for a in answers]
    scored = score_predictions(metric, examples, predictions)
    aggregate = metric.aggregate(scored)
    records = [
        RecordResult(e.source, p, e.reference, pred, s.score, s.extracted, s.note)
        for e, p, pred, s in zip(examples, prompts, predictions, scored, strict=True)
    ]
    return EvalScores(
        metric=metric.name,
        value=aggregate[metric.name],
        direction=settings.direction or metric.direction,
        metrics=aggregate,
        n=len(examples),
        seconds=time.perf_counter() - start,
        records=records,
    )


def write_results(path: str | Path, scores: EvalScores) -> Path:
    """One JSON line per record (source, prompt, reference, prediction, score, extracted, note), atomic."""
    path = Path(path)
    lines = [json.dumps(asdict(r), ensure_ascii=False) for r in scores.records]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path
