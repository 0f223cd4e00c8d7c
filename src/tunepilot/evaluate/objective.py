"""A task metric as the objective of a run or a sweep.

    objective = TaskObjective(config.evaluate, config.data, seed=config.train.seed)
    scores = objective(model, tokenizer)              # at an eval point: the fixed subset
    scores = objective(model, tokenizer, full=True)   # at the end: the whole eval split
    if objective.better(scores.value, best): ...

The eval split, the subset, the label set and the metric (a custom one imported once) are fixed
when the objective is built, so every eval point of a run and every trial of a sweep is scored on
the same records the same way.
"""

from __future__ import annotations

from tunepilot.config import DataSettings
from tunepilot.evaluate.data import load_eval_split
from tunepilot.evaluate.examples import fixed_subset
from tunepilot.evaluate.runner import EvalScores, evaluate_model, metric_for
from tunepilot.evaluate.settings import EvalSettings


class TaskObjective:
    def __init__(self, settings: EvalSettings, data: DataSettings, seed: int = 42):
        self.settings = settings
        self.template = data.template
        self.examples = load_eval_split(data, seed, settings.limit)
        self.subset = fixed_subset(self.examples, settings.subset_size)
        self.metric = metric_for(settings, self.examples)  # labels from the whole split, not the subset
        self.direction = settings.direction or self.metric.direction

    @property
    def name(self) -> str:
        return self.metric.name

    def __call__(self, model, tokenizer, full: bool = False) -> EvalScores:
        records = self.examples if full else self.subset
        return evaluate_model(model, tokenizer, records, self.settings, template=self.template,
                              metric=self.metric)

    def better(self, value: float, best: float | None) -> bool:
        """Is `value` an improvement on `best` (None: nothing yet)?"""
        if best is None:
            return True
        return value > best if self.direction == "maximize" else value < best
