"""bench/lora_corpus.py --smoke: the corpus generator's mechanics on CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tunepilot.engines.replay import CurveTable

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_generator():
    spec = importlib.util.spec_from_file_location("lora_corpus", BENCH / "lora_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lora_corpus"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_corpus_is_a_replayable_curves_file(shared_data, tmp_path):
    corpus = load_generator()
    out = tmp_path / "curves.jsonl"
    result = corpus.main(["--smoke", "--shared", str(shared_data), "--out", str(out), "--work", str(tmp_path / "w")])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["trials"] == len(lines) == 6  # 4 configurations and seeds 1, 2 of the first
    assert all(line["status"] == "complete" for line in lines)
    for line in lines:
        curves = line["learning_curves"]
        assert [s for s, _ in curves["train_loss"]] == [1, 2, 3, 4] and len(curves["grad_norm"]) == 4
        assert [s for s, _ in curves["eval_loss"]][-1] == 4 and len(curves["greedy_match"]) >= 3
        assert line["examples_seen"] == 4 * line["effective_batch"]
    repeated = [line for line in lines if line["config_id"] == lines[0]["config_id"]]
    assert len({line["seed"] for line in repeated}) in (1, 3)
    assert {line["mix"] for line in lines if line["task"] == "mix"} <= {"stacked", "phased"}
    assert {line["task"] for line in lines} == {"gsm8k", "banking77", "mix"}
    table = CurveTable(out, curve="eval_loss")
    assert len(table.runs) == 6
    kept = out.read_text().splitlines()[:-1]  # one result lost ...
    kept[0] = json.dumps({**json.loads(kept[0]), "status": "stopped"})  # ... and one trial cut short
    out.write_text("\n".join(kept) + "\n")
    again = corpus.main(["--smoke", "--shared", str(shared_data), "--out", str(out), "--work", str(tmp_path / "w")])
    assert again["trials"] == 2  # the lost one and the cut-short one: a second call resumes


def test_plans_repeat_the_first_configurations_with_two_more_seeds():
    corpus = load_generator()
    plans = corpus.sample_plans(12, 4, (4, 8))
    by_id = {}
    for p in plans:
        by_id.setdefault(p.config_id, []).append(p)
    assert len(plans) == 20 and sum(len(v) == 3 for v in by_id.values()) == 4
    for group in by_id.values():
        assert len({(p.learning_rate, p.lora_rank, p.task, p.mix) for p in group}) == 1
    assert all(1e-5 <= p.learning_rate <= 3e-3 and p.effective_batch in (4, 8) for p in plans)
    assert corpus.sample_plans(12, 4, (4, 8)) == plans
    with pytest.raises(SystemExit):
        corpus.parse(["--out", "x"])  # no model and no --smoke
