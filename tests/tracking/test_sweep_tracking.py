"""A sweep in MLflow: one parent run, a nested run per trial with its state, reason and costs, the best tagged."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from trackdrive import drive, make_config, wandb_data

from tunepilot.search.results import best_trial
from tunepilot.search.spec import SweepSpec
from tunepilot.tracking import observers_for, sweep_tracker
from tunepilot.tracking.sweep import TRACKING_FILE

mlflow = pytest.importorskip("mlflow")


def tell(study, value, state, **attrs):
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    for key, v in attrs.items():
        trial.set_user_attr(key, v)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    return trial.number


def test_sweep_has_a_parent_run_nested_trials_with_states_and_the_best_tagged(tmp_path, warnings_seen):
    sweep_dir = tmp_path / "sweep"
    base = make_config(sweep_dir / "base", report_to=["mlflow", "tensorboard"])
    spec = SweepSpec(space={"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}})
    tracker = sweep_tracker(spec, base, sweep_dir, "lr-sweep", warn=warnings_seen.append)
    assert (sweep_dir / TRACKING_FILE).is_file()

    study = optuna.create_study(direction="minimize")
    costs = {"seconds": 12.5, "tokens": 4000, "steps": 10, "cost": 0.01}
    # trials 0 and 1 train and log through their own observers (as the run recorder runs them)
    for number, value in ((0, 1.8), (1, 1.2)):
        run_dir = sweep_dir / "trials" / f"{number:04d}"
        config = make_config(run_dir, report_to=["mlflow", "tensorboard"])
        drive(
            observers_for(config, warn=warnings_seen.append),
            config,
            run_dir,
            trial=number,
            params={"learning_rate": 1e-3 * (number + 1)},
        )
        tell(study, value, TrialState.COMPLETE, **costs)
    pruned = tell(study, None, TrialState.PRUNED, reason="pruned at 30% of the schedule", **costs)
    failed = tell(study, None, TrialState.FAIL, reason="out of memory")  # never opened a run of its own
    tracker.on_sweep_end(study, {"best": {"number": best_trial(study).number, "value": 1.2}, "stopped": "budget"})
    assert warnings_seen == []

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{sweep_dir.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunepilot")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tunepilot.kind") == "sweep"]
    assert parent.info.run_name == "lr-sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["tunepilot.best_trial"] == "1"
    assert parent.data.metrics["sweep/complete_trials"] == 2
    children = {
        int(r.data.tags["tunepilot.trial"]): r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == [0, 1, pruned, failed]  # one nested run per trial, none twice
    assert children[0].data.tags["tunepilot.trial_state"] == "complete"
    assert children[1].data.tags["tunepilot.best"] == "true" and children[0].data.tags["tunepilot.best"] == "false"
    assert children[pruned].data.tags["tunepilot.reason"] == "pruned at 30% of the schedule"
    assert children[failed].data.tags["tunepilot.trial_state"] == "fail"
    assert children[failed].info.status == "FAILED"
    assert children[1].data.metrics["trial/value"] == 1.2
    assert children[1].data.metrics["trial/seconds"] == 12.5 and children[1].data.metrics["trial/tokens"] == 4000
    assert children[0].data.params["sampled.learning_rate"] == "0.001"
    # the trained trials' curves are in their nested runs
    assert len(client.get_metric_history(children[1].info.run_id, "train/loss")) == 10
    # TensorBoard's HParams table has a row per trial
    assert sorted(p.name for p in (sweep_dir / "tensorboard" / "hparams").iterdir() if p.is_dir()) == [
        f"trial-{n:04d}" for n in range(4)
    ]

    # a resumed sweep reuses its parent and updates the trials' runs instead of adding runs
    again = sweep_tracker(spec, base, sweep_dir, "lr-sweep", warn=warnings_seen.append)
    again.on_sweep_end(study, {"best": {"number": 0, "value": 1.8}, "stopped": "budget"})
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5
    best_now = [r for r in runs if r.data.tags.get("tunepilot.best") == "true"]
    assert [r.data.tags["tunepilot.trial"] for r in best_now] == ["0"]


def test_no_report_to_means_no_sweep_tracker_files(tmp_path):
    sweep_dir = tmp_path / "sweep"
    tracker = sweep_tracker(SweepSpec(), make_config(sweep_dir / "base"), sweep_dir)
    tracker.on_sweep_end(optuna.create_study(), {"best": None})
    assert not sweep_dir.exists()


def test_wandb_trials_share_the_sweeps_group_and_a_sweep_run_holds_the_trial_table(tmp_path, warnings_seen):
    pytest.importorskip("wandb")
    sweep_dir = tmp_path / "sweep"
    base = make_config(sweep_dir / "base", report_to="wandb")
    tracker = sweep_tracker(SweepSpec(), base, sweep_dir, "lr-sweep", warn=warnings_seen.append)
    group = json.loads((sweep_dir / TRACKING_FILE).read_text())["wandb"]["group"]
    assert group == "lr-sweep-sweep"
    study = optuna.create_study(direction="minimize")
    run_dir = sweep_dir / "trials" / "0000"
    config = make_config(run_dir, report_to="wandb")
    drive(observers_for(config, warn=warnings_seen.append), config, run_dir, trial=0)
    tell(study, 1.5, TrialState.COMPLETE, seconds=3.0, tokens=100)
    tell(study, None, TrialState.PRUNED, reason="pruned at 50% of the schedule")
    tracker.on_sweep_end(study, {"best": {"number": 0, "value": 1.5}})
    assert warnings_seen == []
    assert group.encode() in wandb_data(run_dir, group.encode())
    data = wandb_data(sweep_dir, group.encode(), b"trials")
    assert group.encode() in data and b"trials" in data and b"best_trial" in data
