"""Kill -9 in the middle of a trial, run the same command again: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunepilot.cli.app", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kw,
    )


def trials(sweep_dir):
    storage = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    try:
        return optuna.load_study(study_name="sweep", storage=storage).get_trials()
    except (KeyError, Exception):  # the study is not created yet
        return []


def wait_for(sweep_dir, complete: int, timeout: float = 60.0):
    """Poll the study until `complete` trials finished and a later one is running (deterministic kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ts = trials(sweep_dir)
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        running = [t for t in ts if t.state == TrialState.RUNNING and t.intermediate_values]  # mid-training
        if len(done) >= complete and running:
            return ts
        time.sleep(0.05)
    raise AssertionError(f"sweep did not reach {complete} complete trials in {timeout} s")


def test_kill_9_mid_trial_then_rerun_resumes(tmp_path, grid_curves, make_sweep):
    # each advance sleeps 0.05 s, so a trial takes 0.5-1 s: the kill lands inside one
    path = make_sweep(
        grid_curves,
        budget={"n_trials": 6},
        engine={"name": "replay", "curves": str(grid_curves), "advance_delay_s": 0.05},
    )
    sweep_dir = tmp_path / "sweep"
    proc = cli("sweep", str(path), "--dir", str(sweep_dir))
    try:
        before = wait_for(sweep_dir, complete=3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE}
    killed = [t for t in trials(sweep_dir) if t.state == TrialState.RUNNING]
    assert len(killed) == 1

    rerun = cli("sweep", str(path), "--dir", str(sweep_dir), "--json")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]

    after = trials(sweep_dir)
    by_number = {t.number: t for t in after}
    for number, (params, value) in done_before.items():  # completed trials all still there, unchanged
        assert by_number[number].state == TrialState.COMPLETE
        assert (by_number[number].params, by_number[number].value) == (params, value)
    k = by_number[killed[0].number]
    assert k.state == TrialState.FAIL and k.user_attrs["reason"].startswith("interrupted")
    retries = [t for t in after if t.user_attrs.get("retry_of") == k.number]
    assert len(retries) == 1 and retries[0].params == k.params and retries[0].state == TrialState.COMPLETE
    counted = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 6  # the target count, reached once; the interrupted trial does not count
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not (sweep_dir / "sweep.lock").exists()
