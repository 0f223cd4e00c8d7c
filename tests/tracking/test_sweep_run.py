"""`tunepilot sweep` with report_to: the sweep's hook gives MLflow a parent run and a nested run per trial."""

from __future__ import annotations

import pytest

from tests.sweeps import sweep_cli
from tunepilot.testing import tiny_model_dir, write_arithmetic_chat

mlflow = pytest.importorskip("mlflow")


@pytest.mark.parametrize("engine", ["standard", {"name": "packed", "slots": 2}])
def test_a_real_sweep_reports_its_trials_to_mlflow(tmp_path, engine):
    model = tiny_model_dir(tmp_path / "tiny")
    sweep = {
        "base": {
            "model_name_or_path": str(model),
            "dataset": str(write_arithmetic_chat(tmp_path / "t.jsonl", 16)),
            "eval_dataset": str(write_arithmetic_chat(tmp_path / "e.jsonl", 4, seed=1)),
            "cutoff_len": 48,
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "lora_rank": 4,
            "device": "cpu",
            "report_to": "mlflow",
        },
        "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": 2},
        "engine": engine,
    }
    body = sweep_cli(sweep, tmp_path)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'sw').resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunepilot").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tunepilot.kind") == "sweep"]
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["tunepilot.best_trial"] == str(body["best"]["number"])
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    trials = {r.data.tags["tunepilot.trial"]: r for r in nested}
    assert sorted(trials) == ["0", "1"] and len(nested) == 2  # one run per trial, its stream logged in it
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested)
    assert all(len(client.get_metric_history(r.info.run_id, "train/loss")) == 3 for r in nested)
    for number, run in trials.items():
        row = next(r for r in body["leaderboard"] if str(r["number"]) == number)
        assert run.data.tags["tunepilot.trial_state"] == row["state"] == "complete"
        assert run.data.metrics["trial/tokens"] == row["tokens"]
        assert run.data.tags["tunepilot.best"] == str(int(number) == body["best"]["number"]).lower()
