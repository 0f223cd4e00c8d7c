"""`tunepilot evaluate CONFIG_OR_RUN`: the pure command function behind the CLI.

A RUN is a directory written by `tunepilot train` (config.yaml + adapter/): the base model is
loaded and the adapter applied. A CONFIG is a YAML file: the base model alone, the baseline that a
fine-tune is compared with (optionally with few-shot examples from the train set). `--base` scores
a run's base model without its adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepilot.config import RunConfig, load_config
from tunepilot.errors import UserError
from tunepilot.evaluate.data import load_eval_split, load_examples, load_split_examples
from tunepilot.evaluate.examples import EvalExample, fixed_subset, spread_sample
from tunepilot.evaluate.runner import EvalScores, evaluate_model, metric_for, write_results
from tunepilot.evaluate.settings import EvalSettings


@dataclass
class Target:
    config: RunConfig
    settings: EvalSettings
    run_dir: Path | None  # set when CONFIG_OR_RUN is a run directory
    adapter: Path | None  # the adapter to apply, None for the base model
    tuned: bool = False  # a run's fine-tuned weights (adapter, or model/ of full fine-tuning)


def _load(path: Path) -> tuple[RunConfig, EvalSettings, list[str]]:
    config, warnings = load_config(path, check_paths=False)
    return config, config.evaluate, warnings


def resolve_target(target: Path, base: bool) -> tuple[Target, list[str]]:
    if target.is_dir():
        config_file = target / "config.yaml"
        if not config_file.is_file():
            raise UserError(
                f"{target}: not a run directory (no config.yaml); pass a run written by "
                "`tunepilot train` or a config YAML"
            )
        config, settings, warnings = _load(config_file)
        if base:
            return Target(config, settings, target, None), warnings
        if (target / "model" / "config.json").is_file():  # full fine-tuning saves the whole model
            config = config.model_copy(
                update={
                    "model": config.model.model_copy(update={"name_or_path": str(target / "model"), "gguf_file": None})
                }
            )
            return Target(config, settings, target, None, tuned=True), warnings
        adapter = target / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(
                f"{target}: no adapter/ with adapter_config.json nor model/ (did the run "
                "finish?); use --base to score the base model"
            )
        return Target(config, settings, target, adapter, tuned=True), warnings
    config, settings, warnings = _load(target)
    return Target(config, settings, None, None), warnings


def check_config_code(t: Target) -> None:
    """A custom metric (`module:function`, `file.py:function`) imports and runs code. Named in a run
    directory's saved config.yaml, it was not chosen on this command line: refuse unless trusted."""
    metric = t.settings.metric
    if t.run_dir is None or not metric or ":" not in metric:
        return
    raise UserError(
        f"{t.run_dir / 'config.yaml'}: evaluate.metric {metric!r} is a custom metric, which runs that code; "
        "add --trust-config-code if you trust this run directory, or pass --metric to choose one"
    )


def apply_overrides(settings: EvalSettings, **overrides: Any) -> EvalSettings:
    values = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=values) if values else settings


def results_path(t: Target, data_name: str, out: Path | None) -> Path:
    if out is not None:
        return out
    root = t.run_dir or Path(t.config.output.output_dir)
    kind = "tuned" if t.tuned else "base"
    return root / "eval" / f"{data_name}-{kind}.jsonl"


def load_model_for(t: Target):
    from tunepilot.models import load_model, load_tokenizer, resolve_device

    device = resolve_device(t.config.train.device)
    tokenizer = load_tokenizer(t.config.model)
    model = load_model(t.config.model, device)
    if t.adapter is not None:
        from peft import PeftModel
        from safetensors import SafetensorError

        try:
            model = PeftModel.from_pretrained(model, str(t.adapter))
        except (SafetensorError, UnicodeDecodeError, ValueError, KeyError, OSError) as e:  # a damaged adapter/
            raise UserError(
                f"{t.adapter}: not a readable PEFT adapter ({type(e).__name__}: {str(e)[:200]}); "
                "train the run again, or use --base to score the base model"
            ) from e
    return model, tokenizer


def eval_examples(t: Target, data: Path | None) -> tuple[list[EvalExample], str]:
    """(examples, name): every record of --data FILE, else of the config's eval split (data.eval or
    the val_size hold-out). `evaluate.limit` is applied by run_evaluation, after the labels are read."""
    if data is not None:
        if not data.exists():
            raise UserError(f"{data}: eval data not found; pass an existing file to --data")
        return load_examples(data, t.config.data), data.stem
    examples = load_eval_split(t.config.data, t.config.train.seed)
    return examples, Path(t.config.data.eval.split(",")[0]).stem if t.config.data.eval else "val"


def run_evaluation(
    t: Target,
    data: Path | None,
    out: Path | None,
    progress: Callable[[int], Callable[[int], None] | None] = lambda total: None,
) -> tuple[EvalScores, Path, str]:
    """Load data, shots and model; generate; score; save per-record results.

    `progress(total)` is called once the record count is known and returns a per-batch callback."""
    s = t.settings
    split, name = eval_examples(t, data)
    metric = metric_for(s, split)  # allowed labels from the whole split, not from the sample
    examples = spread_sample(split, s.limit, t.config.train.seed)  # --limit: seeded, across classes
    shots = fixed_subset(load_split_examples(t.config.data, "train"), s.few_shot) if s.few_shot else []
    model, tokenizer = load_model_for(t)
    scores = evaluate_model(
        model,
        tokenizer,
        examples,
        s,
        shots=shots,
        template=t.config.data.template,
        metric=metric,
        progress=progress(len(examples)),
    )
    return scores, write_results(results_path(t, name, out), scores), name


def summary(t: Target, data: str, scores: EvalScores, path: Path) -> dict[str, Any]:
    return {
        **scores.summary(),
        "model": t.config.model.name_or_path,
        "adapter": str(t.adapter) if t.adapter else None,
        "tuned": t.tuned,
        "few_shot": t.settings.few_shot,
        "data": data,
        "results": str(path),
        "failures": sum(1 for r in scores.records if r.score < 1.0),
    }
