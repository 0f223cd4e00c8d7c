"""A sweep whose objective is a task metric scored by generation (issue 8): accuracy, maximised."""

from __future__ import annotations

import json

from tests.sweeps import sweep_cli
from tunepilot.stream import EvalPoint, read_stream

LABELS = ["card_arrival", "lost_card", "top_up"]


def write_intents(path, n: int, offset: int = 0):
    texts = ["Where is my new card?", "I lost my card.", "How do I top up?"]
    rows = [{"text": f"{texts[(i + offset) % 3]} ({i})", "category": LABELS[(i + offset) % 3]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def intent_base(tiny_model, tmp_path, train: int = 24, evals: int = 9, **overrides) -> dict:
    """A run config scored by generation: intent labels, accuracy."""
    return {
        "model_name_or_path": str(tiny_model),
        "dataset": str(write_intents(tmp_path / "train.jsonl", train)),
        "eval_dataset": str(write_intents(tmp_path / "eval.jsonl", evals, offset=1)),
        "columns": {"prompt": "text", "response": "category"},
        "cutoff_len": 48,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "device": "cpu",
        "evaluate": {"metric": "accuracy", "labels": LABELS, "max_new_tokens": 6, "subset_size": 6},
        **overrides,
    }


def test_sweep_maximises_accuracy_on_cpu(tiny_model, tmp_path):
    sweep = {
        "base": intent_base(tiny_model, tmp_path),
        "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": 3},
        "eval_points": 2,
        "engine": "standard",
    }
    body = sweep_cli(sweep, tmp_path)
    assert body["objective"] == {"metric": "accuracy", "direction": "maximize"}
    values = [r["value"] for r in body["leaderboard"] if r["state"] == "complete"]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert body["best"]["value"] == max(values)
    trial_dirs = sorted((tmp_path / "sw" / "trials").iterdir())
    evals = [r for r in read_stream(trial_dirs[0] / "metrics.jsonl") if isinstance(r, EvalPoint)]
    assert [e.step for e in evals] == [0, 2, 4] and evals[0].metrics == {}  # the baseline: eval loss only
    evals = evals[1:]
    assert all("accuracy" in e.metrics for e in evals)
