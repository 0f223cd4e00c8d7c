"""Every use of Optuna's private members in tunepilot, in one module, tested against the installed
Optuna (tests/search/test_optuna_adapter.py).

Why these exist: Optuna's ask/tell interface has no public way to record a trial's heartbeat, list the
trials whose heartbeat went stale, fail a RUNNING trial by its storage id, or reach the SQLAlchemy
engine behind a study; `Study.optimize()` does all of these itself through the members used below.
When an Optuna upgrade moves one of them, this module and its test are what change.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState


def storage(study: optuna.Study) -> BaseStorage:
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return trial._trial_id


def rdb(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage behind a study (Optuna wraps it in a cache layer), or None for other storages."""
    s = storage(study)
    s = getattr(s, "_backend", s)  # optuna.storages._CachedStorage keeps the RDBStorage as _backend
    return s if isinstance(s, RDBStorage) else None


def sql_engine(study: optuna.Study) -> Any:
    """The SQLAlchemy engine of an RDB study (None for others)."""
    r = rdb(study)
    return None if r is None else r.engine


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage(study))


def record_heartbeat(study: optuna.Study, trial_ids: list[int]) -> None:
    """Tell the storage these trials are alive (`BaseHeartbeat.record_heartbeat`, used by optimize())."""
    s = storage(study)
    for tid in trial_ids:
        s.record_heartbeat(tid)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period (by the database's
    clock, so hosts with skewed clocks agree). Trials that never sent a heartbeat are not listed."""
    if not heartbeat_enabled(study):
        return []
    return list(storage(study)._get_stale_trial_ids(study_id(study)))


def fail_running(study: optuna.Study, tid: int) -> bool:
    """Move a RUNNING trial to FAIL; False when it had already finished (another worker got there
    first: the storage checks and updates the row under a lock, so exactly one caller gets True)."""
    try:
        return bool(storage(study).set_trial_state_values(tid, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def set_trial_user_attr(study: optuna.Study, tid: int, key: str, value: Any) -> bool:
    """Set a user attr of a trial known by id (no Trial object); False when the trial already finished."""
    try:
        storage(study).set_trial_user_attr(tid, key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def get_trial(study: optuna.Study, tid: int) -> FrozenTrial:
    return storage(study).get_trial(tid)
