"""Processes that meet on one directory: the sweep lock is taken atomically (two racers never both
pass), a second `train` on a live run directory is refused and leaves the first untouched, and a
seeded sweep killed and re-run again and again never trains a configuration twice."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tunepilot.errors import UserError
from tunepilot.search.study import SweepLock


def _search_fixtures():
    """tests/search/conftest.py (the replay curves of the sweep tests), loaded under its own name."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "search" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tunepilot_search_test_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wide_curves(tmp_path) -> Path:
    """The replay curves of the sweep tests (tests/search/conftest.py) on a finer grid: 40 learning
    rates x 4 ranks = 160 recorded runs, so fresh random proposals rarely land on a stored one."""
    search = _search_fixtures()
    runs = []
    for i in range(40):
        lr = 10 ** (-6 + 4 * i / 39)
        for rank in (4, 8, 16, 32):
            runs.append(
                {
                    "learning_rate": lr,
                    "lora_rank": rank,
                    "warmup_steps": 0,
                    "total_model_steps": 10000,
                    "learning_curves": {"val": search.curve(search.quality(lr, rank), 10000, 1000)},
                }
            )
    return search.write_runs(tmp_path / "wide.jsonl", runs)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunepilot.cli.app", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


# ---------------------------------------------------------------------------------- the sweep lock
def _race(sweep_dir: str, barrier, results, hold_s: float) -> None:
    barrier.wait()
    try:
        with SweepLock(Path(sweep_dir)):
            results.put(("passed", os.getpid()))
            time.sleep(hold_s)  # held while the others try
    except UserError as e:
        results.put(("refused", e.message))


@pytest.mark.parametrize("round_", range(4))
def test_processes_racing_for_one_sweep_dir_never_both_pass(tmp_path, round_):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    sweep_dir = tmp_path / "sweep"
    if round_ % 2:  # a dead holder's file is there: it must not let two racers through either
        sweep_dir.mkdir()
        (sweep_dir / "sweep.lock").write_text("999999999")
    procs = [ctx.Process(target=_race, args=(str(sweep_dir), barrier, results, 0.5)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    passed = [o for o in outcomes if o[0] == "passed"]
    refused = [o[1] for o in outcomes if o[0] == "refused"]
    assert len(passed) == 1, outcomes
    assert len(refused) == n - 1
    for message in refused:  # each refusal names the holder
        assert f"another sweep (pid {passed[0][1]})" in message and str(sweep_dir) in message
    assert not (sweep_dir / "sweep.lock").exists()  # the holder removed it; the refused ones left it alone


def test_sweep_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from tunepilot.search.study import SweepLock\n"
        f"with SweepLock(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"), SweepLock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with SweepLock(tmp_path):  # the kernel dropped the dead holder's flock
        assert (tmp_path / "sweep.lock").read_text() == str(os.getpid())


# ---------------------------------------------------------------------------------- two `train`s
def test_second_train_on_a_live_run_dir_is_refused_and_the_first_completes_untouched(tmp_path, tiny_model):
    from tunepilot.testing import write_arithmetic_chat

    steps = 120  # ~10 s of CPU training: the second process starts and is refused meanwhile
    data = write_arithmetic_chat(tmp_path / "train.jsonl", 16)
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model)},
                "data": {"train": str(data), "cutoff_len": 64},
                "train": {"device": "cpu", "max_steps": steps, "per_device_train_batch_size": 2, "save_steps": 40},
                "output": {"output_dir": str(run_dir)},
            }
        )
    )
    first = _cli("train", config, "--json")
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists():  # the first holds the lock and is training
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first train did not start"
            time.sleep(0.1)
        assert (run_dir / "run.lock").read_text() == str(first.pid)
        second = _cli("train", config, "--json")
        out, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused; make it longer"
        assert second.returncode == 2, (out, err[-3000:])
        assert "Traceback" not in err
        body = json.loads(out)
        assert body["ok"] is False and body["exit_code"] == 2 and body["command"] == "train"
        assert f"pid {first.pid}" in body["error"]["message"] and str(run_dir) in body["error"]["message"]
        out1, err1 = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, err1[-3000:]
    assert json.loads(out1)["ok"] is True
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r.get("kind") == "train"]
    assert train_steps == list(range(1, steps + 1))  # every step once, from one process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ok"] is True and summary["status"] == "completed" and summary["steps"] == steps
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["output"]["output_dir"] == str(run_dir)
    assert (run_dir / "adapter").is_dir() and not (run_dir / "run.lock").exists()


# ---------------------------------------------------------------------------------- kill and resume
def _trials(sweep_dir: Path):
    storage = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    return optuna.load_study(study_name="sweep", storage=storage).get_trials()


def _n_trials(sweep_dir: Path) -> int:
    """Trials stored so far, read without creating anything: Optuna's load_study would create the
    tables of a fresh database, racing the sweep process that is creating them."""
    import sqlite3

    db = sweep_dir / "study.db"
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT count(*) FROM trials").fetchone()[0]
    except sqlite3.Error:  # the tables are not there yet
        return 0


def test_seeded_sweep_killed_five_times_never_trains_a_configuration_twice(tmp_path, wide_curves):
    n_trials = 20
    path = _search_fixtures().sweep_file(
        tmp_path,
        wide_curves,
        sampler={"name": "random", "seed": 7},
        budget={"n_trials": n_trials},
        skip_duplicates=True,  # one configuration = one recorded run (160 of them)
        engine={"name": "replay", "curves": str(wide_curves), "advance_delay_s": 0.05},  # ~0.5 s a trial
    )
    sweep_dir = tmp_path / "sweep"
    rng = random.Random(18)
    for kill in range(1, 6):
        target = _n_trials(sweep_dir) + rng.randint(1, 3)  # let it ask 1-3 trials, then a random moment
        proc = _cli("sweep", path, "--dir", sweep_dir, "--quiet")
        deadline = time.monotonic() + 60
        while _n_trials(sweep_dir) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # mid-trial, between trials, mid-tell
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before kill {kill}: {proc.communicate()[1][-3000:]}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [t for t in _trials(sweep_dir) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) < n_trials
    last = _cli("sweep", path, "--dir", sweep_dir, "--json", "--quiet")
    out, err = last.communicate(timeout=180)
    assert last.returncode == 0, err[-3000:]

    trials = _trials(sweep_dir)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == n_trials  # the study reaches its budget, once
    keys = [t.user_attrs.get("config_key") for t in counted]
    assert None not in keys, [(t.number, t.user_attrs) for t in counted if "config_key" not in t.user_attrs]
    assert len(set(keys)) == len(counted), sorted(keys)  # no configuration trained twice
    assert len({json.dumps(t.params, sort_keys=True) for t in counted}) == len(counted)
    # a resumed sampler continues rather than replaying its earlier proposals: a re-seeded one proposes
    # every stored configuration again after each kill (each rejected as a duplicate, 20-30 here);
    # chance collisions of fresh proposals among the 160 recorded runs are one or two
    replays = [t for t in trials if str(t.user_attrs.get("reason", "")).startswith("duplicate")]
    assert len(replays) <= 8, [(t.number, t.user_attrs["reason"]) for t in replays]
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failure") == "interrupted"]
    assert interrupted, "no kill landed inside a trial"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not (sweep_dir / "sweep.lock").exists()
