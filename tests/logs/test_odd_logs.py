"""Never crash on odd logs: seeded random garbage in every field either reads and gets a verdict, or is
a UserError naming the file. No other exception is acceptable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunepilot.errors import UserError
from tunepilot.health.diagnose import diagnose
from tunepilot.health.findings import VERDICTS
from tunepilot.health.monitor import LiveMonitor
from tunepilot.health.settings import HealthSettings
from tunepilot.logs import RunLog, read_log
from tunepilot.stream import EvalPoint, TrainStep

ODD_VALUES = [
    None,
    True,
    "",
    "abc",
    "1e-3",
    "NaN",
    "inf",
    -1,
    0,
    1e308,
    -1e308,
    [],
    {},
    [1, 2],
    {"a": 1},
    "1 day, 1:00:00",
    3.5,
    2**63,
    -0.0,
]
KEYS = [
    "loss",
    "lr",
    "learning_rate",
    "grad_norm",
    "epoch",
    "step",
    "current_steps",
    "total_steps",
    "eval_loss",
    "eval_accuracy",
    "percentage",
    "elapsed_time",
    "total_tokens",
    "num_input_tokens_seen",
    "train_loss",
]


def odd_entry(rng: random.Random, step: int) -> dict:
    entry = {"step": step, "current_steps": step, "loss": rng.uniform(0, 3)}
    for key in rng.sample(KEYS, rng.randint(0, 5)):
        entry[key] = rng.choice(ODD_VALUES)
    return entry


def judged(path):
    try:
        log = read_log(path)
    except UserError as e:
        assert str(path.name) in e.message
        return None
    return diagnose(log).verdict


@pytest.mark.parametrize("seed", range(12))
def test_odd_llamafactory_lines(tmp_path, seed):
    rng = random.Random(seed)
    lines = [json.dumps(odd_entry(rng, s)) for s in range(1, rng.randint(2, 60))]
    if seed % 3 == 0:
        lines.insert(rng.randrange(len(lines)), json.dumps(rng.choice(ODD_VALUES)))  # not an object
    path = tmp_path / "trainer_log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert judged(path) in (None, *VERDICTS)


@pytest.mark.parametrize("seed", range(12))
def test_odd_trainer_state(tmp_path, seed):
    rng = random.Random(100 + seed)
    history = [odd_entry(rng, s * 10) for s in range(rng.randint(0, 60))]
    history.insert(0, rng.choice(ODD_VALUES))
    state = {
        "log_history": history,
        **{key: rng.choice(ODD_VALUES) for key in ("max_steps", "logging_steps", "best_metric", "num_train_epochs")},
    }
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state))
    assert judged(path) in (None, *VERDICTS)


@pytest.mark.parametrize("text", ["[]", "null", '{"log_history": {}}', '{"log_history": "x"}', "1"])
def test_trainer_state_of_the_wrong_shape(tmp_path, text):
    path = tmp_path / "trainer_state.json"
    path.write_text(text)
    with pytest.raises(UserError, match="trainer_state.json"):
        read_log(path)


def test_odd_sibling_configs_are_skipped(tmp_path):
    (tmp_path / "trainer_log.jsonl").write_text('{"current_steps": 1, "loss": 1.0}\n')
    (tmp_path / "training_args.yaml").write_text("learning_rate: [1, 2]\nlora_rank: high\n: bad")
    (tmp_path / "adapter_config.json").write_text("{not json")
    (tmp_path / "all_results.json").write_text('{"eval_loss": "x"}')
    log = read_log(tmp_path)
    assert log.learning_rate is None and any("unreadable" in n for n in log.notes)
    assert diagnose(log).verdict == "too-short"


@pytest.mark.parametrize("seed", range(12))
def test_odd_numbers_in_the_stream_never_crash_the_rules_or_the_monitor(seed):
    rng = random.Random(1000 + seed)
    numbers = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), 2.0, 2.0, 2.0, None]
    records = []
    for step in range(rng.randint(0, 80)):
        records.append(
            TrainStep(
                step=step,
                loss=rng.choice(numbers),
                lr=rng.choice(numbers),
                grad_norm=rng.choice(numbers),
                epoch=rng.choice(numbers),
            )
        )
        if rng.random() < 0.2:
            records.append(EvalPoint(step=step, eval_loss=rng.choice(numbers)))
    log = RunLog(records=records, source="test", path=Path("stream.jsonl"))
    assert diagnose(log).verdict in VERDICTS
    monitor = LiveMonitor(HealthSettings(), learning_rate=rng.choice([None, 1e-4]))
    for record in records:
        monitor.observe(record)
