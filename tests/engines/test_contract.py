"""The engine contract: one suite every engine passes (standard, packed, replay, launched), and one run
lifecycle: a packed trial's directory is a standard run's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.engines.base import Engine, Outcome, Report, TrialSpec
from tunepilot.engines.summary import RunSummary, read_summary

CURVES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lm-tuning-curves"


def _curves() -> Path:
    return next(CURVES.glob("*.jsonl"))


def _make(name: str, tiny_config):
    """(engine, make_spec(number, run_dir)) for each engine under test."""
    if name == "replay":
        from tunepilot.engines.replay import ReplayEngine

        engine = ReplayEngine(_curves(), slots=2)

        def spec(n, run_dir):
            return TrialSpec(n, {"learning_rate": 2e-5 * (n + 1), "num_train_epochs": 3}, {}, run_dir)

        return engine, spec
    config = tiny_config(max_steps=4, eval_steps=2)
    nproc = 2 if name == "launched" else 1  # `train --nproc 2`: two gloo processes on CPU
    if name == "standard":
        from tunepilot.engines.standard import StandardEngine

        engine = StandardEngine()
    elif name == "launched":
        from tunepilot.engines.launched import LaunchedEngine

        engine = LaunchedEngine(poll_s=0.05)
    else:
        from tunepilot.engines.packed.engine import PackedEngine

        engine = PackedEngine(config, slots=2)

    def spec(n, run_dir):
        return TrialSpec(
            n,
            {"learning_rate": 1e-3 * (n + 1)},
            tiny_config(max_steps=4, learning_rate=1e-3 * (n + 1), output_dir=str(run_dir), nproc=nproc),
            run_dir,
            report_fractions=(0.5, 1.0),
        )

    return engine, spec


def _run_out(engine, number: int) -> tuple[list[Report], Outcome]:
    reports: list[Report] = []
    for _ in range(1000):
        for p in engine.advance():
            if p.number != number:
                continue
            if isinstance(p, Outcome):
                return reports, p
            reports.append(p)
    raise AssertionError("the engine never finished the trial")


@pytest.mark.parametrize("name", ["standard", "packed", "replay", "launched"])
def test_every_engine_keeps_the_contract(name, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the launched engine's processes share two cores
    engine, spec = _make(name, tiny_config)
    try:
        assert isinstance(engine, Engine)
        assert isinstance(engine.default_metric, str) and engine.supports(engine.default_metric)
        assert not engine.supports("no_such_metric")
        assert engine.slots >= 1 and engine.active == []
        first, twin = spec(0, tmp_path / "t0"), spec(0, tmp_path / "twin")
        key = engine.config_key(first)
        assert key is None or (isinstance(key, str) and key == engine.config_key(twin))
        engine.start(first)
        assert engine.active == [0]
        reports, outcome = _run_out(engine, 0)
        fractions = [r.fraction for r in reports]
        assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == pytest.approx(1.0)
        assert all(math.isfinite(r.value) for r in reports)
        assert outcome.state == "complete" and outcome.failure is None and math.isfinite(outcome.value)
        assert outcome.steps > 0 and outcome.seconds >= 0 and engine.active == []
        engine.start(spec(1, tmp_path / "t1"))
        engine.advance()
        pruned = engine.stop(1, "pruned by the test")
        assert pruned.state == "pruned" and pruned.failure is None and engine.active == []
        assert all(isinstance(v, float) for v in engine.seconds.values())
    finally:
        engine.close()
    with pytest.raises(ValueError, match="failure kind"):
        Outcome(3, "failed", reason="no kind")


def _sweep_file(tmp_path: Path, tiny_config, engine: dict, objective: dict | None = None) -> Path:
    base = tiny_config(max_steps=4, eval_steps=2)
    base_path = tmp_path / "base.yaml"
    from tunepilot.config import dump_config

    base_path.write_text(dump_config(base))
    sweep = {
        "base": str(base_path),
        "space": {"learning_rate": [1e-3, 3e-3]},
        "sampler": {"name": "grid"},
        "pruner": "none",
        "budget": {"n_trials": 2},
        "engine": engine,
    }
    if objective:
        sweep["objective"] = objective
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_an_objective_the_engine_cannot_report_exits_2_naming_one_that_can(tiny_config, tmp_path):
    path = _sweep_file(tmp_path, tiny_config, {"name": "packed", "slots": 2}, {"metric": "exact_match"})
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "sw")])
    assert result.exit_code == 2, result.output
    assert "packed engine cannot report 'exact_match'" in result.output and "engine: standard" in result.output
    assert not (tmp_path / "sw" / "trials").exists()  # refused before any training


def test_a_packed_trial_directory_is_a_standard_run_directory(tiny_config, tmp_path):
    """Same files, same summary schema; evaluate and diagnose give the same fields on both."""
    from tunepilot.engines.run import train

    standard = tmp_path / "standard"
    train(tiny_config(max_steps=4, eval_steps=2, output_dir=str(standard)))
    path = _sweep_file(tmp_path, tiny_config, {"name": "packed", "slots": 2})
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "sw"), "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    packed = tmp_path / "sw" / "trials" / "0000"
    for run in (standard, packed):
        assert {"config.yaml", "metrics.jsonl", "summary.json", "adapter"} <= {p.name for p in run.iterdir()}
        summary = read_summary(run / "summary.json")
        assert summary.status == "completed" and summary.steps == 4 and summary.adapter
    s, p = (json.loads((d / "summary.json").read_text()) for d in (standard, packed))
    assert set(s) == set(p) == set(RunSummary.model_fields)
    assert p["engine"] == "packed" and p["trial"] == 0 and p["params"]["learning_rate"] in (1e-3, 3e-3)
    diagnosed = [_json(["diagnose", str(d), "--json"]) for d in (standard, packed)]
    assert set(diagnosed[0]) == set(diagnosed[1])
    evaluated = [
        _json(["evaluate", str(d), "--limit", "2", "--max-new-tokens", "4", "--metric", "exact_match", "--json"])
        for d in (standard, packed)
    ]
    assert set(evaluated[0]) == set(evaluated[1]) and evaluated[1]["ok"]
    assert set(s["data"]["train"]) == set(p["data"]["train"]) and p["data"]["train"]["records"] > 0
    exported = CliRunner().invoke(
        app,
        [
            "export",
            str(tmp_path / "sw"),
            "--trial",
            "best",
            "--adapter-only",
            "-o",
            str(tmp_path / "exported"),
            "--json",
        ],
    )
    assert exported.exit_code == 0, exported.output[-2000:]
    assert "## Data" in (tmp_path / "exported" / "README.md").read_text()  # the model card reads its summary


def _json(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output[-2000:]
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_packed_trials_seconds_add_up_to_the_engines_time(tiny_config, tmp_path):
    """Each trial is charged its share of every packed pass: totals add up, no trial counts the pack."""
    from tunepilot.engines.packed.engine import PackedEngine

    config = tiny_config(max_steps=4, eval_steps=2)
    engine = PackedEngine(config, slots=3)
    for n in range(3):
        engine.start(
            TrialSpec(
                n,
                {},
                tiny_config(max_steps=2 + 2 * n, output_dir=str(tmp_path / str(n))),
                tmp_path / str(n),
                report_fractions=(0.5, 1.0),
            )
        )
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    spent = sum(v for k, v in engine.seconds.items() if k != "load")
    assert sum(o.seconds for o in outcomes) == pytest.approx(spent, rel=0.02)
    assert max(o.seconds for o in outcomes) < spent  # no trial is charged the whole pack
    summaries = [read_summary(tmp_path / str(n) / "summary.json") for n in range(3)]
    assert [s.seconds for s in summaries] == [
        pytest.approx(o.seconds, abs=1e-3) for o in sorted(outcomes, key=lambda o: o.number)
    ]
