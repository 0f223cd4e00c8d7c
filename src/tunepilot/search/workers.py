"""Sweep workers sharing one Optuna study: on several machines (PostgreSQL) or one per local GPU.

Every worker asks and tells trials of the same Optuna study through Optuna's RDB storage; nothing
else is shared. What Optuna does not do for ask/tell, and is written here:

- Heartbeats. Optuna records a trial's heartbeat only inside `optimize()`. A WorkerStudy records one
  when it asks a trial and then from a thread every `heartbeat_s` until the trial is told, into
  Optuna's own heartbeat table, so Optuna's stale-trial query sees it.
- Stale trials. The same thread (and every worker at start) fails the trials whose heartbeat is older
  than the grace period and enqueues one retry of each. The storage moves a trial from RUNNING to FAIL
  under a row lock, so exactly one worker wins and the retry is enqueued once.
- One ask at a time. Checking the budget and asking a trial, or checking a configuration and claiming
  it, are two steps; two workers between them would both pass. They run under a database-wide mutex
  (PostgreSQL advisory lock; for SQLite, which is one machine, a file lock beside the database), so
  n_trials holds exactly and no configuration is claimed twice.
- Waiting. A worker with nothing to start stays while other workers' trials run: if one of them dies,
  its retry is started here, and the budget still ends the study.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunepilot.errors import UserError
from tunepilot.search import optuna_adapter as adapter
from tunepilot.search.study import WorkerOptions, enqueue_retry

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
STALE = "interrupted (its worker stopped sending heartbeats: killed, or its GPU or host died)"


# ---------------------------------------------------------------------------------------------------
# a database-wide mutex


class DbMutex:
    """A lock held by one process at a time among all that use one database; re-entrant in a process.

    PostgreSQL: a session advisory lock on a connection of its own (released by the server when the
    process dies). SQLite: an flock on `<database>.lock` (SQLite is one machine). Others: a lock in
    this process only.
    """

    def __init__(self, url: str, name: str, engine: Any = None):
        self.url, self.key = url, _key(name)
        self.engine, self.owns_engine = engine, False
        self.depth, self.local = 0, threading.RLock()
        self.conn: Any = None
        self.fd: int | None = None
        self.path = _sqlite_path(url)

    def __enter__(self) -> DbMutex:
        self.local.acquire()
        self.depth += 1
        if self.depth == 1:
            try:
                self._acquire()
            except BaseException:
                self.depth -= 1
                self.local.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.depth == 1:
                self._release()
        finally:
            self.depth -= 1
            self.local.release()

    def _acquire(self) -> None:
        if self.url.startswith("postgres"):
            import sqlalchemy

            if self.engine is None:
                self.engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
                self.owns_engine = True
            self.conn = self.engine.connect()
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self.conn.commit()
        elif self.path is not None:
            self.fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def _release(self) -> None:
        if self.conn is not None:
            import sqlalchemy

            try:
                self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self.conn.commit()
            finally:
                self.conn.close()
                self.conn = None
                if self.owns_engine:
                    self.engine.dispose()
                    self.engine, self.owns_engine = None, False
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _key(name: str) -> int:
    return zlib.crc32(f"tunepilot:{name}".encode()) - 2**31  # a signed 32-bit int fits pg_advisory_lock's bigint


def _sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return url[len("sqlite:///") :]


def init_lock(url: str) -> DbMutex:
    """Held while Optuna creates the tables of a fresh database (see study.open_storage)."""
    return DbMutex(url, "init")


# ---------------------------------------------------------------------------------------------------
# the study of a worker


class WorkerStudy(optuna.Study):
    """The same Optuna study (the same rows; optuna-dashboard opens it), opened by a worker that shares
    it: its trials send heartbeats, and `turn()` serialises budget checks and asks across workers."""

    def __init__(self, name: str, storage: Any, pruner: Any, worker: WorkerOptions, url: str):
        super().__init__(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner)
        self.worker = worker
        self.owned: dict[int, int] = {}  # number -> storage id of the trials this process asked, not yet told
        self.mutex = DbMutex(url, f"study:{name}", adapter.sql_engine(self))
        self.log: Callable[[str], None] = lambda msg: None
        self.pulse = _Pulse(self, worker.heartbeat_s)

    def ask(self, fixed_distributions: Any = None) -> optuna.Trial:
        trial = super().ask(fixed_distributions)
        tid = adapter.trial_id(trial)
        adapter.record_heartbeat(self, [tid])  # a worker killed before the thread's next beat is found too
        self.owned[trial.number] = tid
        trial.set_user_attr("worker", WORKER_ID)  # which process ran it (leaderboard, post-mortems)
        return trial

    def tell(self, trial: Any, values: Any = None, state: Any = None, skip_if_finished: bool = False) -> Any:
        number = trial if isinstance(trial, int) else trial.number
        try:
            return super().tell(trial, values, state, skip_if_finished)
        finally:
            self.owned.pop(number, None)

    def turn(self) -> DbMutex:
        return self.mutex

    def others_running(self, poll_s: float | None = None) -> bool:
        """Are trials of other workers running? If so, wait a little (their end, or their death, may
        free the budget or enqueue a retry for this worker) and say True."""
        running = self.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not any(t.number not in self.owned for t in running):
            return False
        time.sleep(poll_s if poll_s is not None else min(2.0, self.worker.heartbeat_s / 2))
        return True

    def close(self) -> None:
        self.pulse.stop()


class _Pulse:
    """The heartbeat thread of a WorkerStudy: beats for its owned trials, fails other workers' stale ones."""

    def __init__(self, study: WorkerStudy, interval: float):
        self.study, self.interval = study, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tunepilot-heartbeat", daemon=True)
        self.thread.start()
        _PULSES.append(self)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                adapter.record_heartbeat(self.study, list(self.study.owned.values()))
                fail_stale(self.study, self.study.log)
            except Exception as e:  # a database hiccup: the next beat tries again (grace covers a few)
                self.study.log(f"heartbeat: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
        if self in _PULSES:
            _PULSES.remove(self)


_PULSES: list[_Pulse] = []


def stop_heartbeats() -> None:
    """End the heartbeat threads of this process (a sweep's end; its trials are all told)."""
    for pulse in list(_PULSES):
        pulse.stop()


def fail_stale(study: optuna.Study, log: Callable[[str], None] | None = None) -> list[int]:
    """Fail the trials whose worker stopped sending heartbeats, and enqueue one retry of each.

    Optuna's `fail_stale_trials` fails them without a reason; the reason (which also keeps them out
    of n_trials) is written first, while the trial is still RUNNING, then the trial is failed; only
    the worker whose fail succeeded enqueues the retry.
    """
    failed = []
    for tid in adapter.stale_trial_ids(study):
        adapter.set_trial_user_attr(study, tid, "reason", STALE)
        adapter.set_trial_user_attr(study, tid, "failure", "interrupted")
        if not adapter.fail_running(study, tid):
            continue
        t = adapter.get_trial(study, tid)
        failed.append(t.number)
        if t.user_attrs.get("retry_of") is None:
            enqueue_retry(study, t.params, t.user_attrs, t.number)
            if log:
                log(f"trial {t.number}: its worker stopped sending heartbeats; failed, retried once")
        elif log:
            log(f"trial {t.number}: its worker stopped sending heartbeats; failed (it was already a retry)")
    return failed


def is_worker_study(study: optuna.Study) -> bool:
    return isinstance(study, WorkerStudy)


@contextlib.contextmanager
def turn(study: optuna.Study) -> Iterator[None]:
    """The study's cross-worker mutex for a shared study; nothing for a study of one process."""
    if isinstance(study, WorkerStudy):
        with study.turn():
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------------
# --gpus: one worker process per local GPU


def parse_gpus(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or any(not g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {text!r}: give distinct GPU indices separated by commas, e.g. --gpus 0,1,2,3")
    return gpus


def spawn_workers(
    gpus: list[str], argv: Callable[[int], list[str]], storage: str, out_dir: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Start one `tunepilot sweep` worker per GPU (CUDA_VISIBLE_DEVICES set to it) and wait for all.

    The storage URL goes to the workers in their environment, not on their command line, where `ps`
    would show its password. Each worker's JSON result lands in out_dir/worker-N.json. Ctrl-C or
    SIGTERM here is passed on to the workers, which fail their running trials as interrupted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, gpu in enumerate(gpus):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, WORKER_STORAGE_ENV: storage}
        with open(out_dir / f"worker-{i}.json", "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "tunepilot.cli.app", *argv(i)], env=env, stdout=out))
        log(f"worker {i} started on GPU {gpu} (pid {procs[-1].pid})")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    results = []
    for i, (gpu, code) in enumerate(zip(gpus, codes, strict=True)):
        try:
            body = json.loads((out_dir / f"worker-{i}.json").read_text(encoding="utf-8") or "{}")
        except ValueError:
            body = {}
        results.append({"worker": i, "gpu": gpu, "exit_code": code, **_brief(body)})
    return results


WORKER_STORAGE_ENV = "TUNEPILOT_WORKER_STORAGE"


def _brief(body: dict[str, Any]) -> dict[str, Any]:
    if "error" in body:
        return {"error": body["error"].get("message")}
    return {"stopped": body.get("stopped")}


def run_local_workers(
    setup: Any, gpus: list[str], argv: Callable[[int], list[str]], log: Callable[[str], None]
) -> dict[str, Any]:
    """`tunepilot sweep --gpus 0,1,..`: the workers, then leaderboard, best.yaml and summary from the study.

    With the sweep directory's SQLite study, this process holds the directory's lock for all its
    workers (no other sweep may use the directory meanwhile) and first fails, and retries, the
    trials a kill left RUNNING; with a shared storage the workers find stale trials by heartbeat.
    """
    from tunepilot.search.results import leaderboard, write_results
    from tunepilot.search.study import SweepLock, default_storage, open_storage, storage_errors

    in_dir = setup.storage == default_storage(setup.sweep_dir)
    with SweepLock(setup.sweep_dir) if in_dir else contextlib.nullcontext():
        retried: list[int] = []
        if in_dir:
            retried = _recover_dir_study(setup, open_storage(setup.storage))
            if retried:
                log(f"resuming: trial(s) {retried} were interrupted; marked failed and retried once")
        workers = spawn_workers(gpus, argv, setup.storage, setup.sweep_dir / "workers", log)
        with storage_errors(setup.storage):
            try:
                study = optuna.load_study(study_name=setup.study_name, storage=open_storage(setup.storage))
            except KeyError:
                study = None
        if study is None:  # no worker got as far as creating the study: their own errors say why
            errors = [w["error"] for w in workers if w.get("error")]
            raise UserError(errors[0] if errors else "no worker started; see their messages above")
        results = write_results(setup.sweep_dir, study, setup.base)
    objective = study.user_attrs.get("objective", {"metric": "objective", "direction": "?"})
    reasons = sorted({w.get("stopped") or w.get("error") or f"exit code {w['exit_code']}" for w in workers})
    return {
        "sweep_dir": str(setup.sweep_dir),
        "storage": setup.storage,
        "study": setup.study_name,
        "objective": objective,
        "stopped": "; ".join(reasons),
        "resumed_trials": retried,
        "workers": workers,
        "leaderboard": leaderboard(study),
        "decisions": study.user_attrs.get("decisions", []),
        **results,
    }


def _recover_dir_study(setup: Any, storage: Any) -> list[int]:
    from tunepilot.search.study import recover_interrupted

    try:
        study = optuna.load_study(study_name=setup.study_name, storage=storage)
    except KeyError:
        return []  # a new study: nothing was left running
    return recover_interrupted(study, exclusive=True)
