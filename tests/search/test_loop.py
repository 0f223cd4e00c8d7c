"""The slot loop on the replay engine: pruning at equal fractions, failures, out-of-memory retry."""

from __future__ import annotations

import optuna
import pytest

from tunepilot.search.sweep import prepare, run_sweep


def run(path, tmp_path, **kw):
    return run_sweep(prepare(path, tmp_path / "sweep", **kw))


def load(result):
    return optuna.load_study(study_name=result["study"], storage=result["storage"])


def test_median_pruning_stops_bad_trials_early_at_equal_fractions(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves,
        sampler={"name": "random", "seed": 3},
        pruner={"name": "median", "n_startup_trials": 3},
        budget={"n_trials": 16},
        engine={"name": "replay", "curves": str(grid_curves), "slots": 2},
    )
    result = run(path, tmp_path)
    trials = load(result).get_trials()
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) == 16 and pruned and complete
    # pruned trials stopped before the end of their own schedules, so they cost less
    assert all(t.user_attrs["steps"] < t.user_attrs["total_steps"] for t in pruned)
    # ... and what was pruned was worse at the end than the best trial that ran to the end
    best = max(t.value for t in complete)
    from tunepilot.engines.replay import CurveTable

    table = CurveTable(grid_curves)
    assert all(table.runs[t.user_attrs["replay_index"]].final < best for t in pruned)
    # 20,000-step and 10,000-step schedules report at the same percent grid
    assert {s % 5 for t in trials for s in t.intermediate_values} == {0}
    lengths = {t.user_attrs["total_steps"] for t in trials}
    assert lengths == {10000, 20000} or len(lengths) == 1


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves,
        engine={"name": "replay", "curves": str(grid_curves), "faults": {0: "exception", 1: "exception", 2: "nan"}},
    )
    result = run(path, tmp_path)
    rows = {r["number"]: r for r in result["leaderboard"]}
    assert len(rows) == 6
    assert rows[0]["state"] == "fail" and rows[0]["failure"] == "error"  # an enqueued NaN is refused up-front now
    assert rows[1]["state"] == "fail" and "injected failure" in rows[1]["reason"]
    assert rows[2]["state"] == "fail" and "nan" in rows[2]["reason"].lower()
    assert all(rows[n]["state"] == "complete" for n in (3, 4, 5))
    assert result["best"]["number"] in (3, 4, 5)


def test_out_of_memory_retries_with_half_micro_batch_and_double_accumulation(tmp_path, curves_file, make_sweep):
    runs = [
        {
            "learning_rate": lr,
            "batch_size": bs,
            "total_model_steps": 2000,
            "learning_curves": {"acc": [[1000, 0.5 + bs / 100], [2000, 0.6 + bs / 100]]},
        }
        for lr in (1e-5, 1e-4)
        for bs in (4, 8)
    ]
    curves = curves_file("bs.jsonl", runs)
    path = make_sweep(
        curves,
        space={"learning_rate": {"low": 1e-5, "high": 1e-4, "log": True}, "per_device_train_batch_size": [8]},
        objective={"metric": "acc"},
        budget={"n_trials": 3},
        engine={"name": "replay", "curves": str(curves), "faults": {0: "oom"}},
    )
    result = run(path, tmp_path)
    rows = {r["number"]: r for r in result["leaderboard"]}
    assert rows[0]["state"] == "fail" and "out of memory" in rows[0]["reason"]
    retry = rows[1]
    assert retry["retry_of"] == 0 and retry["params"] == rows[0]["params"]
    assert retry["overrides"] == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert retry["state"] == "complete" and retry["value"] == pytest.approx(0.64)  # the batch-4 run


def test_budget_in_training_steps_stops_the_sweep(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves, budget={"n_trials": 50, "train_steps": 25000})
    result = run(path, tmp_path)
    spent = sum(r.get("steps", 0) for r in result["leaderboard"])
    assert "training-step budget" in result["stopped"]
    assert 25000 <= spent < 25000 + 20000  # the last trial is stopped at the point that crossed the budget


def test_a_configuration_already_run_is_never_trained_twice(tmp_path, curves_file, make_sweep):
    # two recorded runs only: every proposal maps to one of them, so exactly two trainings happen
    runs = [
        {"learning_rate": lr, "total_model_steps": 1000, "learning_curves": {"acc": [[500, q / 2], [1000, q]]}}
        for lr, q in ((1e-5, 0.6), (1e-3, 0.8))
    ]
    curves = curves_file("two.jsonl", runs)
    path = make_sweep(
        curves,
        space={"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
        objective={"metric": "acc"},
        budget={"n_trials": 8},
        skip_duplicates=True,
        enqueue=[{"learning_rate": 1e-5}, {"learning_rate": 1.1e-5}],  # chosen on purpose: same run twice
    )
    result = run(path, tmp_path)
    rows = sorted(result["leaderboard"], key=lambda r: r["number"])
    trained = [r for r in rows if r["steps"] > 0]
    assert len(trained) == 2 and {r["value"] for r in trained} == {0.6, 0.8}
    # the enqueued twin is told its twin's result; sampled duplicates are rejected and proposed again
    assert rows[1]["state"] == "complete" and rows[1]["value"] == 0.6 and rows[1]["steps"] == 0
    rejected = [r for r in rows if r["state"] == "fail"]
    assert rejected and all(r["reason"].startswith("duplicate of trial") and r["steps"] == 0 for r in rejected)
    # rejected proposals do not use up n_trials; the sweep ends when only duplicates come back
    assert result["stopped"].startswith("converged")


def test_grid_sampler_visits_every_combination_once(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves,
        space={"learning_rate": [1e-5, 1e-4, 1e-3], "lora_rank": [4, 16]},
        sampler="grid",
        budget={"n_trials": 20},
    )
    result = run(path, tmp_path)
    rows = result["leaderboard"]
    assert result["stopped"] == "protocol finished"  # the grid ran out before the budget
    combos = {(r["params"]["learning_rate"], r["params"]["lora_rank"]) for r in rows}
    assert len(rows) == 6 and combos == {(lr, r) for lr in (1e-5, 1e-4, 1e-3) for r in (4, 16)}
    best = max(rows, key=lambda r: r["value"])
    assert best["params"] == {"learning_rate": 1e-4, "lora_rank": 16}  # the known best of the file


def test_grid_needs_choices_or_steps(tmp_path, grid_curves, make_sweep):
    from tunepilot.errors import UserError

    path = make_sweep(grid_curves, sampler="grid")  # learning_rate is a continuous range
    with pytest.raises(UserError, match="space.learning_rate: the grid sampler needs"):
        run(path, tmp_path)


def test_gp_sampler_runs_or_names_its_missing_dependency(tmp_path, grid_curves, make_sweep):
    import importlib.util

    from tunepilot.errors import UserError

    path = make_sweep(grid_curves, sampler="gp", budget={"n_trials": 3})
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(UserError, match="gp needs scipy"):
            run(path, tmp_path)
    else:
        assert len(run(path, tmp_path)["leaderboard"]) == 3
