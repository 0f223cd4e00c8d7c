"""The replay engine on files it has never seen: columns, scales and curve names come from the file."""

from __future__ import annotations

import math

import pytest

from tunepilot.engines.base import Outcome, Report, TrialSpec
from tunepilot.engines.replay import CurveTable, ReplayEngine
from tunepilot.errors import UserError


@pytest.fixture
def odd_file(curves_file):
    """Another task's format: other columns, another curve name, uneven report steps."""
    runs = [
        {
            "iteration": i,
            "learning_rate": lr,
            "batch_size": bs,
            "optimizer": opt,
            "total_model_steps": 2500,
            "learning_curves": {"f1": [[700, 0.1 * i], [1400, 0.1 * i + 0.05], [2500, 0.1 * i + 0.07]]},
        }
        for i, (lr, bs, opt) in enumerate([(1e-5, 8, "adam"), (1e-4, 8, "adam"), (1e-3, 32, "sgd"), (1e-4, 32, "sgd")])
    ]
    return curves_file("odd.jsonl", runs)


def test_nearest_uses_log_scale_for_wide_columns_and_aliases(odd_file):
    table = CurveTable(odd_file)
    assert table.curve == "f1" and "optimizer" in table.columns
    assert table.nearest({"learning_rate": 2.5e-5}).index == 0
    # 4e-4 lies between the geometric (3.2e-4) and arithmetic (5.5e-4) middles of 1e-4 and 1e-3:
    # nearer 1e-3 on the log scale this wide column gets, nearer 1e-4 on a linear one
    assert table.nearest({"learning_rate": 4e-4}).index == 2
    # per_device_train_batch_size reaches the file's batch_size through the alias table
    assert table.nearest({"learning_rate": 1e-4, "per_device_train_batch_size": 30}).index == 3
    assert table.nearest({"learning_rate": 1e-4, "optimizer": "adam"}).index == 1


def test_engine_reveals_one_point_per_advance_with_own_fractions(odd_file):
    engine = ReplayEngine(odd_file, slots=2)
    engine.start(TrialSpec(0, {"learning_rate": 1e-5}, None))
    engine.start(TrialSpec(1, {"learning_rate": 1e-3}, None))
    with pytest.raises(RuntimeError):
        engine.start(TrialSpec(2, {"learning_rate": 1e-4}, None))
    first = engine.advance()
    assert [(p.number, p.step, round(p.fraction, 2)) for p in first] == [(0, 700, 0.28), (1, 700, 0.28)]
    assert first[1].value == pytest.approx(0.2)
    pruned = engine.stop(1, "pruned by test")
    assert pruned.state == "pruned" and pruned.steps == 700 and pruned.value == pytest.approx(0.2)
    assert engine.active == [0]
    rest = engine.advance() + engine.advance()
    done = [p for p in rest if isinstance(p, Outcome)]
    assert len(done) == 1 and done[0].state == "complete" and done[0].steps == 2500
    assert [p.fraction for p in rest if isinstance(p, Report)][-1] == 1.0
    assert engine.active == []


def test_warmup_ratio_is_derived_and_unknown_keys_are_named(curves_file, odd_file):
    path = curves_file(
        "w.jsonl",
        [
            {
                "learning_rate": 1e-4,
                "warmup_steps": w,
                "total_model_steps": 1000,
                "learning_curves": {"acc": [[1000, w / 1000]]},
            }
            for w in (0, 100, 300)
        ],
    )
    assert CurveTable(path).nearest({"warmup_ratio": 0.12}).final == pytest.approx(0.1)
    assert ReplayEngine(odd_file).check_space(["lora_rank"])[0].startswith("space.lora_rank: no column")


def test_a_nan_param_cannot_start_and_a_bad_file_is_a_user_error(tmp_path, odd_file):
    with pytest.raises(ValueError):
        ReplayEngine(odd_file).start(TrialSpec(0, {"learning_rate": math.nan}, None))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"learning_rate": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        CurveTable(bad)


def test_real_curves_file_best_and_compute(shared_data):
    table = CurveTable(shared_data / "lm-tuning-curves" / "deberta-base_mnli.jsonl")
    assert len(table.runs) > 100 and 0.5 < table.best_final <= 1.0
    run = table.runs[0]
    assert run.points[-1][0] == run.total_steps  # the last point is the end of the schedule
