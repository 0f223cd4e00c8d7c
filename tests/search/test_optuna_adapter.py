"""The Optuna internals tunepilot uses (search.optuna_adapter), against the installed Optuna."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from tunepilot.search import optuna_adapter as adapter


def study_with_heartbeat(tmp_path, interval=1, grace=1):
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=interval, grace_period=grace
    )
    return optuna.create_study(storage=storage, study_name="s")


def test_ids_storage_and_engine(tmp_path):
    study = study_with_heartbeat(tmp_path)
    trial = study.ask()
    tid = adapter.trial_id(trial)
    assert adapter.trial_id(study.get_trials()[0]) == tid
    assert adapter.get_trial(study, tid).number == trial.number == 0
    assert adapter.study_id(study) == adapter.storage(study).get_study_id_from_name("s")
    assert isinstance(adapter.rdb(study), optuna.storages.RDBStorage)
    assert adapter.sql_engine(study).dialect.name == "sqlite"
    assert adapter.rdb(optuna.create_study()) is None and adapter.sql_engine(optuna.create_study()) is None


def test_heartbeats_make_only_silent_trials_stale(tmp_path):
    study = study_with_heartbeat(tmp_path)
    assert adapter.heartbeat_enabled(study) and not adapter.heartbeat_enabled(optuna.create_study())
    alive, dead, silent = study.ask(), study.ask(), study.ask()
    adapter.record_heartbeat(study, [adapter.trial_id(alive), adapter.trial_id(dead)])
    time.sleep(2.2)  # past the 1 s grace period
    adapter.record_heartbeat(study, [adapter.trial_id(alive)])
    # a trial that never sent a heartbeat is not stale (Optuna cannot tell it from one just asked)
    assert adapter.stale_trial_ids(study) == [adapter.trial_id(dead)]
    assert adapter.stale_trial_ids(optuna.create_study()) == []
    assert silent.number == 2


def test_fail_running_succeeds_once_and_attrs_need_a_running_trial(tmp_path):
    study = study_with_heartbeat(tmp_path)
    trial = study.ask()
    tid = adapter.trial_id(trial)
    assert adapter.set_trial_user_attr(study, tid, "reason", "why")
    assert adapter.fail_running(study, tid) is True
    assert adapter.fail_running(study, tid) is False  # a second worker loses the race
    assert adapter.set_trial_user_attr(study, tid, "reason", "late") is False
    t = study.get_trials()[0]
    assert t.state == TrialState.FAIL and t.user_attrs["reason"] == "why"
