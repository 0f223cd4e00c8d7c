"""A task metric as the objective of a run or a sweep.

    objective = TaskObjective(config.evaluate, config.data, seed=config.train.seed)
    scores = objective(model, tokenizer)              # at an eval point: the fixed subset
    scores = objective(model, tokenizer, full=True)   # at the end: every record of the eval split
    if objective.better(scores.value, best): ...

The eval split, the subset, the label set and the metric (a custom one imported once) are fixed
when the objective is built, so every eval point of a run and every trial of a sweep is scored on
the same records the same way.

The eval split honours `data.max_eval_samples` and `evaluate.limit` (the smaller wins), as a
seeded sample spread over the split (`spread_sample`), not its head. Allowed labels come from the
whole split. At the end (`full=True`) every record of that split is generated, but the value
returned is still the subset's score (`value`), so the best checkpoint is chosen between like
scores; the full-split score is reported next to it as `<metric>_full` (and `n_full`).
Long evaluations print a progress line to stderr every PROGRESS_EVERY_S seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace

from tunepilot.config import DataSettings
from tunepilot.evaluate.data import load_eval_split
from tunepilot.evaluate.examples import fixed_subset, spread_sample
from tunepilot.evaluate.runner import EvalScores, evaluate_model, metric_for, score_predictions
from tunepilot.evaluate.settings import EvalSettings

PROGRESS_EVERY_S = 10.0


def eval_limit(settings: EvalSettings, data: DataSettings) -> int | None:
    limits = [n for n in (settings.limit, data.max_eval_samples) if n is not None]
    return min(limits) if limits else None


class TaskObjective:
    def __init__(
        self, settings: EvalSettings, data: DataSettings, seed: int = 42, log: Callable[[str], None] | None = None
    ):
        self.settings = settings
        self.template = data.template
        split = load_eval_split(data, seed, None)
        self.metric = metric_for(settings, split)  # labels from the whole split, not the sample
        self.examples = spread_sample(split, eval_limit(settings, data), seed)
        self.subset = fixed_subset(self.examples, settings.subset_size)
        n, size = len(self.examples), settings.subset_size  # fixed_subset's choice, as positions
        self._subset_index = list(range(n)) if size >= n else [(i * n) // size for i in range(size)]
        self.direction = settings.direction or self.metric.direction
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def name(self) -> str:
        return self.metric.name

    def __call__(self, model, tokenizer, full: bool = False) -> EvalScores:
        records = self.examples if full else self.subset
        scores = evaluate_model(
            model,
            tokenizer,
            records,
            self.settings,
            template=self.template,
            metric=self.metric,
            progress=self._progress(len(records)),
        )
        if not full or len(self.subset) == len(self.examples):
            return scores
        return self._like_for_like(scores)

    def _like_for_like(self, full: EvalScores) -> EvalScores:
        """The full split's scores, valued on the subset's records (re-scored, not re-generated)."""
        subset = [self.examples[i] for i in self._subset_index]
        predictions = [full.records[i].prediction for i in self._subset_index]
        aggregate = self.metric.aggregate(score_predictions(self.metric, subset, predictions))
        metrics = {**aggregate, f"{self.name}_full": full.value, "n_full": float(full.n)}
        return replace(full, value=aggregate[self.name], metrics=metrics)

    def _progress(self, total: int) -> Callable[[int], None]:
        """A line every PROGRESS_EVERY_S seconds while generating (silent for short evaluations)."""
        start, last, done = time.monotonic(), [time.monotonic()], [0]

        def advance(n: int) -> None:
            done[0] += n
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S and done[0] < total:
                last[0] = now
                rate = done[0] / max(now - start, 1e-9)
                self.log(
                    f"evaluating {self.name}: {done[0]}/{total} records, {now - start:.0f} s, "
                    f"about {(total - done[0]) / rate:.0f} s left"
                )

        return advance

    def better(self, value: float, best: float | None) -> bool:
        """Is `value` an improvement on `best` (None: nothing yet)?"""
        if best is None:
            return True
        return value > best if self.direction == "maximize" else value < best
