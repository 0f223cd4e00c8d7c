"""Each tracker, fed a run's stream through its observer, read back with the tool's own reader."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from trackdrive import STEPS, drive, make_config, wandb_data

from tunepilot.engines.observers import RunInfo
from tunepilot.tracking import observers_for
from tunepilot.tracking.base import TrackerObserver, TrackingFailed

mlflow = pytest.importorskip("mlflow")


def mlflow_run(run_dir: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunepilot")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_mlflow_local_store_has_params_metric_history_events_summary_and_artifacts(tmp_path, warnings_seen):
    run_dir = tmp_path / "run"
    config = make_config(run_dir, report_to="mlflow")
    drive(observers_for(config, warn=warnings_seen.append), config, run_dir)
    assert warnings_seen == []
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.003"
    assert run.data.params["model.name_or_path"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))  # as long as the stream's train steps
    assert [round(m.value, 6) for m in history] == [round(3.0 - 0.1 * s, 6) for s in range(1, STEPS + 1)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [5, 10]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0.5, 1.0]
    assert run.data.tags["tunepilot.event.loss_spike"].startswith("step 3:")
    assert run.data.tags["tunepilot.status"] == "completed"
    assert run.data.metrics["summary/tokens"] == 100 * STEPS
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "curves.png", "summary.json"} <= artifacts
    # offline first: the store and its artifacts are inside the run directory
    assert (run_dir / "mlflow.db").is_file() and (run_dir / "mlartifacts").is_dir()


def test_tensorboard_event_files_read_back_with_tensorboards_reader(tmp_path, warnings_seen):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    config = make_config(run_dir, report_to=["tensorboard"])
    drive(observers_for(config, warn=warnings_seen.append), config, run_dir)
    assert warnings_seen == []
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert loss[-1].value == pytest.approx(2.0)
    assert [e.step for e in acc.Scalars("eval/loss")] == [5, 10]
    assert {"events/loss_spike/text_summary", "summary/text_summary"} <= set(acc.Tags()["tensors"])


def test_wandb_writes_an_offline_run_directory(tmp_path, warnings_seen):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    config = make_config(run_dir, report_to="wandb")
    drive(observers_for(config, warn=warnings_seen.append), config, run_dir)
    assert warnings_seen == []
    data = wandb_data(run_dir, b"train/loss", b"eval/loss")
    assert b"train/loss" in data and b"eval/loss" in data  # the records are in the run's data file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_mlflow_server_warns_once_and_the_runs_complete(tmp_path, warnings_seen):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name in ("a", "b"):
        run_dir = tmp_path / name
        config = make_config(run_dir, report_to=["mlflow", "tensorboard"], mlflow_tracking_uri=uri)
        summary = drive(observers_for(config, warn=warnings_seen.append), config, run_dir)
        assert summary.status == "completed" and (run_dir / "tensorboard").is_dir()  # the other tracker works
    assert len(warnings_seen) == 1, warnings_seen
    assert "mlflow tracking is off" in warnings_seen[0] and "does not answer" in warnings_seen[0]


class _Broken:
    """A tracker whose package is missing: every call after the first would fail too."""

    name = "broken"

    def __init__(self):
        self.calls = 0

    def start(self, ctx):
        self.calls += 1
        raise TrackingFailed("brokenlib is not installed (pip install brokenlib)")

    def log_metrics(self, step, metrics):
        self.calls += 1

    def log_event(self, event):
        self.calls += 1

    def end(self, summary):
        self.calls += 1


def test_a_failing_tracker_warns_once_is_switched_off_and_never_raises(tmp_path, warnings_seen):
    run_dir = tmp_path / "run"
    config = make_config(run_dir)
    backend = _Broken()
    summary = drive([TrackerObserver(backend, config.tracking, warnings_seen.append)], config, run_dir)
    assert summary.status == "completed"
    assert backend.calls == 1  # switched off after its first failure: no call per record
    assert warnings_seen == [
        "broken tracking is off for this run: brokenlib is not installed "
        "(pip install brokenlib); training goes on without it"
    ]


def test_no_secret_reaches_params_or_tensorboard(tmp_path, warnings_seen, monkeypatch):
    pytest.importorskip("tensorboard")
    secret = "hf_Zq81secretvalue"
    monkeypatch.setenv("HF_TOKEN", secret)
    run_dir = tmp_path / "run"
    config = make_config(
        run_dir,
        report_to=["mlflow", "tensorboard"],
        system=f"use {secret} to log in",
        model_name_or_path="https://user:pw1234@example.org/models/tiny",
    )
    drive(observers_for(config, warn=warnings_seen.append), config, run_dir)
    assert warnings_seen == []
    _, run = mlflow_run(run_dir)
    assert run.data.params["data.system"] == "use *** to log in"
    assert run.data.params["model.name_or_path"] == "https://example.org/models/tiny"
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").iterdir())
    stored = (run_dir / "mlflow.db").read_bytes() + events
    assert secret.encode() not in stored and b"pw1234" not in stored


def test_report_to_names_like_hf_and_rejects_the_rest(tmp_path):
    from tunepilot.errors import UserError

    assert make_config(tmp_path, report_to="all").tracking.report_to == ["mlflow", "tensorboard", "wandb"]
    assert make_config(tmp_path, report_to="none").tracking.report_to == []
    assert observers_for(make_config(tmp_path)) == []
    with pytest.raises(UserError) as e:
        make_config(tmp_path, report_to=["mlflow", "comet_ml"])
    assert "tracking.report_to" in str(e.value) and "comet_ml" in str(e.value)
    with pytest.raises(UserError) as e:
        make_config(tmp_path, mlflow_tracking_uri="https://me:hunter2@mlflow.example.org")
    assert "MLFLOW_TRACKING_PASSWORD" in str(e.value)


def test_observer_hooks_return_at_once_while_the_tracker_is_slow(tmp_path, warnings_seen):
    """A slow tracker delays only itself: on_record queues the work and returns."""

    release, finished = threading.Event(), threading.Event()

    class Slow(_Broken):
        name = "slow"

        def start(self, ctx):
            release.wait(30)
            finished.set()

    run_dir = tmp_path / "run"
    config = make_config(run_dir)
    observer = TrackerObserver(Slow(), config.tracking, warnings_seen.append)
    observer.on_start(RunInfo("standard", run_dir, config, STEPS))
    assert not finished.is_set()  # on_start returned while the tracker was still busy
    release.set()
    assert finished.wait(30)
