"""The model card (README.md) of every export: where the weights came from and how good they are.

Base model and method, the data (files, record and token counts), every hyperparameter of the
resolved config, eval loss and task metrics (tuned against base where `tunepilot evaluate` has scored
both), the health verdict of `tunepilot diagnose`, and the tunepilot version. Front matter in the
Hugging Face model-card format, so the card renders on the Hub as is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunepilot import __version__
from tunepilot.tracking.base import config_params


def model_card(source, base: str, kind: str, title: str, notes: list[str]) -> str:
    """`kind`: merged, adapter or full; `title`: the export directory's name."""
    cfg = source.config
    method = _method(cfg)
    tags = ["tunepilot", "lora" if cfg.method.finetuning_type == "lora" else "full-fine-tuning"]
    if cfg.model.quantization_bit:
        tags.append("qlora")
    front = [
        "---",
        f"base_model: {json.dumps(base)}",
        f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
    ]
    origin = f"`{source.run_dir}`"
    if source.trial is not None:
        origin = f"trial {source.trial} of the sweep `{source.sweep_dir}` (`{source.run_dir}`)"
    what = {
        "merged": "the adapter merged into the base weights",
        "adapter": "the LoRA adapter alone (PEFT format)",
        "full": "the fully fine-tuned model",
    }[kind]
    lines = [
        *front,
        f"# {title}",
        "",
        f"Fine-tuned from `{base}` with {method}, by tunepilot {__version__}.",
        f"This export holds {what}; exported {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {origin}.",
        "",
    ]
    lines += _data(source) + _results(source) + _health(source) + _hyperparameters(cfg) + _usage(kind, base)
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines).rstrip() + "\n"


def _method(cfg) -> str:
    m = cfg.method
    if m.finetuning_type == "full":
        return "full fine-tuning"
    name = f"QLoRA ({cfg.model.quantization_bit}-bit base)" if cfg.model.quantization_bit else "LoRA"
    if getattr(m, "use_dora", False):
        name += " with DoRA"
    scale = "rsLoRA" if m.use_rslora else "alpha/r"
    return (
        f"{name}: rank {m.lora_rank}, alpha {m.alpha:g} ({scale}), dropout {m.lora_dropout:g}, "
        f"targets {', '.join(m.lora_target)}"
    )


def _data(source) -> list[str]:
    cfg, stats = source.config.data, (source.summary or {}).get("data") or {}
    rows = [
        ("train", cfg.train, stats.get("train")),
        ("eval", cfg.eval or (f"{cfg.val_size:.0%} of train" if cfg.val_size else None), stats.get("eval")),
    ]
    out = [
        "## Data",
        "",
        "| split | source | records | tokens | trained tokens | truncated |",
        "|---|---|---|---|---|---|",
    ]
    for split, where, s in rows:
        if where is None:
            continue
        s = s if isinstance(s, dict) else {"records": s} if isinstance(s, int) else {}  # older summaries: a count
        out.append(
            f"| {split} | `{where}` | {s.get('records', '?')} | {s.get('tokens', '?')} | "
            f"{s.get('trainable_tokens', '?')} | {s.get('truncated', '?')} |"
        )
    out += [
        "",
        f"Format `{cfg.format}`, template `{cfg.template}`, cutoff_len {cfg.cutoff_len}"
        f"{', responses only' if not cfg.train_on_prompt else ''}.",
        "",
    ]
    return out


def _results(source) -> list[str]:
    s = source.summary
    out = ["## Results", ""]
    if s is None:
        return [*out, "No summary.json: the run did not finish.", ""]
    out.append(
        f"- status: {s.get('status')} after {s.get('steps')}/{s.get('planned_steps')} steps, "
        f"{s.get('tokens')} trained tokens, {float(s.get('seconds') or 0):.0f} s on {s.get('device')}"
    )
    if s.get("stop_reason"):
        out.append(f"- stopped: {s['stop_reason'].get('message')}")
    if s.get("best_eval_loss") is not None:
        out.append(
            f"- best eval loss: {s['best_eval_loss']:.4f} (step {s.get('best_step')})"
            f"{', weights of that step restored' if s.get('restored_best') else ''}"
        )
    objective = s.get("objective") or {}
    if objective.get("name") not in (None, "eval_loss") and objective.get("best") is not None:
        out.append(f"- objective {objective['name']}: {objective['best']:.4f} (step {objective.get('step')})")
    metrics = _last_eval_metrics(source.run_dir)
    if metrics:
        out.append("- task metrics at the last evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    out += _evaluations(source.run_dir)
    return [*out, ""]


def _last_eval_metrics(run_dir: Path) -> dict[str, float]:
    from tunepilot.stream import EvalPoint, read_stream

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    evals = [r for r in read_stream(path) if isinstance(r, EvalPoint)]
    return {k: v for k, v in (evals[-1].metrics if evals else {}).items() if isinstance(v, (int, float))}


def _evaluations(run_dir: Path) -> list[str]:
    """`tunepilot evaluate` results: mean score per data set, tuned against base where both ran."""
    scores: dict[str, dict[str, tuple[float, int]]] = {}
    for path in sorted((run_dir / "eval").glob("*-*.jsonl")):
        name, _, kind = path.stem.rpartition("-")
        values = [json.loads(line)["score"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if values and kind in ("tuned", "base"):
            scores.setdefault(name, {})[kind] = (sum(values) / len(values), len(values))
    if not scores:
        return []
    out = ["", "| evaluate data | records | tuned | base |", "|---|---|---|---|"]
    for name, by_kind in scores.items():
        tuned, base = by_kind.get("tuned"), by_kind.get("base")
        n = (tuned or base)[1]
        out.append(f"| {name} | {n} | {f'{tuned[0]:.4f}' if tuned else '-'} | {f'{base[0]:.4f}' if base else '-'} |")
    return out


def _health(source) -> list[str]:
    if not (source.run_dir / "metrics.jsonl").is_file():
        return []
    from tunepilot.health.diagnose import diagnose
    from tunepilot.logs import read_log

    diagnosis = diagnose(read_log(source.run_dir))
    out = ["## Health", "", f"`tunepilot diagnose` verdict: **{diagnosis.verdict}**.", ""]
    for finding in diagnosis.findings[:5]:
        out.append(f"- {finding.severity} `{finding.code}`: {finding.message}")
    return [*out, ""] if diagnosis.findings else out


def _hyperparameters(cfg) -> list[str]:
    params = config_params(cfg)  # flat section.key, secrets redacted
    out = ["## Hyperparameters", "", "| key | value |", "|---|---|"]
    out += [f"| {k} | `{_cell(v)}` |" for k, v in params.items()]
    return [*out, ""]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _usage(kind: str, base: str) -> list[str]:
    if kind == "adapter":
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "",
            'model = AutoPeftModelForCausalLM.from_pretrained(".")',
            f"# the base model {base} is loaded from adapter_config.json",
        ]
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained(".")',
            'tokenizer = AutoTokenizer.from_pretrained(".")',
        ]
    return ["## Usage", "", "```python", *code, "```", ""]
