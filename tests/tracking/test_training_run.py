"""Trackers on a real tiny training run: what MLflow and TensorBoard hold matches metrics.jsonl."""

from __future__ import annotations

import pytest

from tunepilot.config import build_config
from tunepilot.stream import EvalPoint, TrainStep, read_stream
from tunepilot.testing import tiny_model_dir, write_arithmetic_chat

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def test_a_training_run_logs_its_whole_stream_to_mlflow_and_tensorboard(tmp_path, warnings_seen, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunepilot.engines.run import train

    model = tiny_model_dir(tmp_path / "tiny")
    run_dir = tmp_path / "run"
    config, _ = build_config(
        {
            "model_name_or_path": str(model),
            "dataset": str(write_arithmetic_chat(tmp_path / "train.jsonl", 24)),
            "eval_dataset": str(write_arithmetic_chat(tmp_path / "eval.jsonl", 8, seed=1)),
            "cutoff_len": 48,
            "max_steps": 6,
            "eval_steps": 3,
            "per_device_train_batch_size": 4,
            "lora_rank": 4,
            "output_dir": str(run_dir),
            "report_to": ["mlflow", "tensorboard"],
            "run_name": "tiny-lora",
        }
    )
    summary = train(config)  # the run recorder adds the trackers report_to names
    trouble = [r for r in caplog.records if r.name.startswith("tunepilot.tracking") and r.levelname == "WARNING"]
    assert summary.status == "completed" and trouble == []
    records = read_stream(run_dir / "metrics.jsonl")
    steps = [r.step for r in records if isinstance(r, TrainStep)]
    evals = [r for r in records if isinstance(r, EvalPoint)]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tunepilot").experiment_id])
    assert run.info.run_name == "tiny-lora" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == steps
    history = client.get_metric_history(run.info.run_id, "eval/loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(e.step, round(e.eval_loss, 6)) for e in evals]
    assert run.data.params["method.lora_rank"] == "4"
    assert "adapter" in {a.path for a in client.list_artifacts(run.info.run_id)}

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == steps
