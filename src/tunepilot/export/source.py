"""What an export reads: a run directory, or one trial of a sweep directory (`--trial best|N`).

A run directory holds config.yaml (the resolved config), adapter/ (PEFT, LoRA and QLoRA) or model/
(full fine-tuning), summary.json and metrics.jsonl. A sweep directory holds trials/NNNN/ run
directories and best.json (`tunepilot.search.results`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepilot.config import RunConfig, load_config
from tunepilot.errors import UserError


@dataclass
class Source:
    run_dir: Path
    config: RunConfig
    summary: dict[str, Any] | None  # summary.json, when the run wrote one
    adapter: Path | None  # adapter/ of a LoRA/QLoRA run
    full_model: Path | None  # model/ of a full fine-tuning run
    sweep_dir: Path | None = None
    trial: int | None = None


def is_sweep_dir(path: Path) -> bool:
    return (path / "trials").is_dir() or (path / "sweep.json").is_file()


def resolve_source(path: str | Path, trial: str | None = None) -> Source:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; pass a run directory (tunepilot train) or a sweep directory")
    if is_sweep_dir(path):
        number = _trial_number(path, trial or "best")
        source = _run(path / "trials" / f"{number:04d}", f"{path} trial {number}")
        source.sweep_dir, source.trial = path, number
        return source
    if trial is not None:
        raise UserError(f"--trial {trial}: {path} is a run directory, not a sweep directory; drop --trial")
    return _run(path, str(path))


def _trial_number(sweep_dir: Path, trial: str) -> int:
    if trial == "best":
        best = sweep_dir / "best.json"
        if not best.is_file():
            raise UserError(
                f"{sweep_dir}: no best.json (no trial has completed yet); pass --trial N to export "
                f"one of {_available(sweep_dir)}"
            )
        return int(json.loads(best.read_text(encoding="utf-8"))["number"])
    try:
        number = int(trial)
    except ValueError:
        raise UserError(f"--trial {trial!r}: expected best or a trial number") from None
    if not (sweep_dir / "trials" / f"{number:04d}").is_dir():
        raise UserError(
            f"--trial {number}: {sweep_dir}/trials/{number:04d} does not exist; trials with a "
            f"directory: {_available(sweep_dir)}"
        )
    return number


def _available(sweep_dir: Path) -> str:
    numbers = sorted(int(p.name) for p in (sweep_dir / "trials").glob("[0-9]*") if p.is_dir() and p.name.isdigit())
    return ", ".join(map(str, numbers)) or "none"


def _run(run_dir: Path, what: str) -> Source:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{what}: no config.yaml; pass a run directory written by tunepilot train or sweep")
    config, _ = load_config(config_file, check_paths=False)
    adapter = run_dir / "adapter"
    full = run_dir / "model"
    has_adapter = (adapter / "adapter_config.json").is_file()
    has_full = (full / "config.json").is_file()
    if not (has_adapter or has_full):
        raise UserError(
            f"{what}: no adapter/ (LoRA) nor model/ (full fine-tuning); did the run finish? "
            "(a pruned trial keeps no adapter: export a completed trial)"
        )
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
    return Source(run_dir, config, summary, adapter if has_adapter else None, full if has_full else None)
