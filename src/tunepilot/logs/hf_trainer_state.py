"""HF Trainer `trainer_state.json`: its `log_history` holds train, eval and summary entries.

Accepted: the file, a run directory holding it, or a directory of `checkpoint-*` folders (the one
with the highest step is read: it holds the longest history). Entries are told apart by their keys:
`loss` is a train step, `eval_*` an evaluation (`eval_loss` may be missing: accuracy- or WER-only
evals keep their metrics), `train_loss` the end-of-run summary. `best_metric` is kept as metadata
only: it may be an accuracy or a WER rather than a loss.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError
from tunepilot.logs.base import RunLog, sort_and_dedupe
from tunepilot.logs.siblings import apply_siblings, flatten
from tunepilot.logs.values import read_json, to_float, to_int, to_step
from tunepilot.stream import EvalPoint, Record, TrainStep

NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# eval_* keys that describe the evaluation itself, not the model
_EVAL_BOOKKEEPING = {"runtime", "samples_per_second", "steps_per_second", "num_tokens"}


def detect(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name == NAME or _has_log_history(path) else None
    if (path / NAME).is_file():
        return path / NAME
    if (path / "trainer_log.jsonl").is_file():
        return None  # a LLaMA-Factory run still in progress: its trainer_log.jsonl is the complete one
    checkpoints = [
        (int(m.group(1)), p) for p in path.iterdir() if (m := _CHECKPOINT.match(p.name)) and (p / NAME).is_file()
    ]
    return max(checkpoints)[1] / NAME if checkpoints else None


def _has_log_history(path: Path) -> bool:
    if path.suffix != ".json" or path.stat().st_size > 200_000_000:
        return False
    try:
        head = path.open("r", encoding="utf-8-sig", errors="replace").read(4096)
    except OSError:
        return False
    return '"log_history"' in head or '"global_step"' in head


def read(path: Path) -> RunLog:
    state = read_json(path, "an HF Trainer trainer_state.json")
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise UserError(f"{path}: no 'log_history' list; expected an HF Trainer trainer_state.json")
    log = RunLog(records=[], source="hf_trainer_state", path=path)
    log.records = _records(history, to_step(state.get("logging_steps")) or 1, log)
    log.records, dropped = sort_and_dedupe(log.records)
    if dropped:
        log.notes.append(f"{dropped} repeated step(s) dropped (kept the last entry of each)")
    log.planned_steps = to_step(state.get("max_steps"))
    log.extra["best_metric"] = to_float(state.get("best_metric"))
    log.extra["last_step"] = to_step(state.get("global_step"))
    control = ((state.get("stateful_callbacks") or {}).get("TrainerControl") or {}).get("args") or {}
    log.extra["stopped"] = control.get("should_training_stop") is True  # ended by the Trainer (early stopping)
    log.config.update(
        flatten(
            {
                "num_train_epochs": state.get("num_train_epochs"),
                "per_device_train_batch_size": state.get("train_batch_size"),
                "logging_steps": state.get("logging_steps"),
            }
        )
    )
    apply_siblings(log, path.parent)
    return log


def _records(history: list[Any], logging_steps: int, log: RunLog) -> list[Record]:
    records: list[Record] = []
    step, inferred = 0, 0
    for entry in history:
        if not isinstance(entry, dict):
            continue
        given = to_step(entry.get("step"))
        if given is None:
            inferred += 1
            given = step + logging_steps
        step = given
        record = _record(entry, step, log)
        if record is not None:
            records.append(record)
    if inferred:
        log.notes.append(f"{inferred} entr(ies) without 'step': placed {logging_steps} step(s) after the previous one")
    return records


def _record(entry: dict[str, Any], step: int, log: RunLog) -> Record | None:
    epoch = to_float(entry.get("epoch"))
    if "loss" in entry:
        return TrainStep(
            step=step,
            loss=to_float(entry["loss"]),
            lr=to_float(entry.get("learning_rate", entry.get("lr"))),
            grad_norm=to_float(entry.get("grad_norm")),
            epoch=epoch,
            tokens=to_int(entry.get("num_input_tokens_seen")) or None,
        )
    metrics = {
        key[5:]: value for key, value in entry.items() if key.startswith("eval_") and key[5:] not in _EVAL_BOOKKEEPING
    }
    if metrics:
        numbers = {k: v for k, v in ((k, to_float(v)) for k, v in metrics.items()) if v is not None}
        loss = numbers.pop("loss", None)
        return EvalPoint(step=step, eval_loss=loss, metrics=numbers, epoch=epoch)
    if "train_loss" in entry:
        log.extra["final_train_loss"] = to_float(entry["train_loss"])
    return None
