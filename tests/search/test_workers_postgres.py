"""Sweep workers in separate processes on one study in a real PostgreSQL server (started by the test).

Each worker is `tunepilot sweep SWEEP.yaml --storage URL`, as on several machines. The replay engine
sleeps a little at each curve point, so trials of different workers overlap.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta

import optuna
from optuna.trial import TrialState

# A beat a second; a trial is stale after 10 s without one. 3 s failed a live worker's trial once in CI
# (4 workers, PostgreSQL and pytest on 2 cores: a heartbeat thread can wait seconds for the CPU).
FAST_BEAT = ["--heartbeat", "1", "--grace", "10"]


def sweep_yaml(make_sweep, curves, n_trials=24, delay=0.02, **kw):
    return make_sweep(
        curves,
        budget={"n_trials": n_trials, **kw.pop("budget", {})},
        skip_duplicates=True,
        engine={"name": "replay", "curves": str(curves), "advance_delay_s": delay},
        **kw,
    )


def start(path, url, tmp_path, i, *extra):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # no --json: the progress lines on stderr say which trials each worker started
    args = ["sweep", str(path), "--dir", str(tmp_path / f"w{i}"), "--storage", url, *FAST_BEAT, *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "tunepilot.cli.app", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(procs, timeout=90):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def load(url):
    return optuna.load_study(study_name="sweep", storage=url).get_trials()


def started(stderr_texts):
    """Trial numbers each worker started, from their progress lines."""
    return [int(n) for text in stderr_texts for n in re.findall(r"^trial (\d+) started", text, re.M)]


def test_four_workers_run_exactly_the_budget_and_train_nothing_twice(tmp_path, grid_curves, make_sweep, pg_url):
    # a fresh database: the four workers also create its tables at the same moment
    path = sweep_yaml(make_sweep, grid_curves)
    results = finish([start(path, pg_url, tmp_path, i) for i in range(4)])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert ": n_trials reached (24 finished, 0 running" in stdout.splitlines()[0]
    trials = load(pg_url)
    states = collections.Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == 24 and states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    # every other trial is a sampled duplicate, rejected before training
    assert all("duplicate_of" in t.user_attrs for t in trials if t.state == TrialState.FAIL)
    numbers = started([stderr for _, _, stderr in results])
    assert len(numbers) == len(set(numbers)) == 24  # no trial id run twice
    keys = [t.user_attrs["config_key"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(set(keys)) == 24  # no configuration trained twice
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) == 4  # all took part


def test_a_sigkilled_worker_trial_fails_by_heartbeat_and_is_retried(tmp_path, grid_curves, make_sweep, pg_url):
    path = sweep_yaml(make_sweep, grid_curves, delay=0.05)
    procs = [start(path, pg_url, tmp_path, i) for i in range(4)]
    victim = procs[0]
    deadline, killed = time.monotonic() + 60, None
    try:
        while killed is None and time.monotonic() < deadline:  # the victim's trial, mid-training
            for t in load(pg_url) if _has_study(pg_url) else []:
                mine = t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                if mine and t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed = t
                    break
            time.sleep(0.05)
    finally:
        if killed is None:
            for p in procs:
                p.kill()
    assert killed is not None, "the victim never ran a trial"
    victim.wait()
    results = finish(procs[1:])
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    trials = {t.number: t for t in load(pg_url)}
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and "stopped sending heartbeats" in dead.user_attrs["reason"]
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params, retries
    assert retries[0].state == TrialState.COMPLETE, retries[0].user_attrs  # its failure reason, if it failed
    assert not retries[0].user_attrs["worker"].endswith(f":{victim.pid}")  # another worker ran it
    states = collections.Counter(t.state for t in trials.values())
    assert states[TrialState.COMPLETE] == 24 and states[TrialState.RUNNING] == 0  # the study still ends at 24
    assert any(f"trial {killed.number}: its worker stopped sending heartbeats" in err for _, _, err in results)


def _has_study(url):
    try:
        optuna.load_study(study_name="sweep", storage=url)
    except KeyError:
        return False
    return True


def test_a_train_steps_budget_is_passed_only_by_trials_running_when_reached(tmp_path, grid_curves, make_sweep, pg_url):
    budget = 100_000  # 5-10 trials of 10,000-20,000 steps
    # trials of ~1.5 s: long against the gap between a tell's timestamp and its commit on loaded cores
    path = sweep_yaml(make_sweep, grid_curves, n_trials=100, delay=0.15, budget={"train_steps": budget})
    results = finish([start(path, pg_url, tmp_path, i) for i in range(4)])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "training-step budget spent" in stdout.splitlines()[0]
    trials = [t for t in load(pg_url) if t.user_attrs.get("steps")]
    assert all(t.state.is_finished() for t in trials)
    # the moment the finished trials' steps reached the budget
    total, reached = 0, None
    for t in sorted(trials, key=lambda t: t.datetime_complete):
        total += t.user_attrs["steps"]
        if total >= budget:
            reached = t.datetime_complete
            break
    assert reached is not None
    # a tell is stamped before it commits, and on two loaded cores the commit can come a while later;
    # a worker that ignored the others' spending would start trials many seconds after
    slack = timedelta(seconds=1.0)
    later = [t.number for t in trials if t.datetime_start > reached + slack]
    assert later == []  # nothing started after the budget was spent
    # running when it was reached: the trial whose tell reached it (its own steps may pass the budget)
    # and those that started before and ended after
    running = [t for t in trials if t.datetime_start <= reached + slack and t.datetime_complete >= reached]
    spent = sum(t.user_attrs["steps"] for t in trials)
    assert spent - budget <= sum(t.user_attrs["steps"] for t in running)
    assert len(running) <= 4  # at most one running trial per worker passed it
