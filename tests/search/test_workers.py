"""Workers on one machine (--gpus, the sweep directory's SQLite), storage errors, and seeds on resume."""

from __future__ import annotations

import collections
import json
import multiprocessing
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.search.study import check_storage
from tunepilot.search.sweep import prepare, run_sweep


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunepilot.cli.app", *args], capture_output=True, text=True, timeout=120
    )


def test_gpus_starts_one_worker_per_gpu_on_the_sweep_dir_sqlite(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves,
        budget={"n_trials": 12},
        skip_duplicates=True,
        engine={"name": "replay", "curves": str(grid_curves), "advance_delay_s": 0.02},
    )
    sweep_dir = tmp_path / "sweep"
    r = cli("sweep", str(path), "--dir", str(sweep_dir), "--gpus", "0,1", "--heartbeat", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    body = json.loads(r.stdout)
    assert [w["gpu"] for w in body["workers"]] == ["0", "1"] and all(w["exit_code"] == 0 for w in body["workers"])
    trials = optuna.load_study(study_name="sweep", storage=body["storage"]).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12 and len({t.user_attrs["config_key"] for t in complete}) == 12
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    # the parent wrote the results from the storage, and the directory is free again
    board = json.loads((sweep_dir / "leaderboard.json").read_text())
    assert sum(r["state"] == "complete" for r in board) == 12 and body["best"]["number"] in {t.number for t in complete}
    assert not (sweep_dir / "sweep.lock").exists()


def _open(url: str, queue) -> None:
    try:
        check_storage(url)
        queue.put("ok")
    except BaseException as e:  # what a worker would have crashed with
        queue.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_fresh_sqlite_database_at_once_do_not_crash(tmp_path):
    # without the set-up lock: "UNIQUE constraint failed: alembic_version", "table ... already exists"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [queue.get(timeout=5) for _ in procs] == ["ok"] * 6


def test_processes_opening_a_fresh_postgres_database_at_once_do_not_crash(pg_url):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(pg_url, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [queue.get(timeout=5) for _ in procs] == ["ok"] * 6


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("foo://x", "not an Optuna RDB URL"),
        ("not a url", "not an Optuna RDB URL"),
        ("postgresql+psycopg2://bob:s3cret@127.0.0.1:1/db", "pip install psycopg psycopg-binary"),
        ("postgresql+psycopg://bob:s3cret@127.0.0.1:1/db", "Connection refused"),
        ("sqlite:////nonexistent/dir/x.db", "does not exist"),
    ],
)
def test_a_bad_storage_is_one_message_with_exit_2_and_no_password(tmp_path, grid_curves, make_sweep, url, says):
    path = make_sweep(grid_curves)
    for command in (["sweep", str(path), "--dir", str(tmp_path / "s")], ["report", str(tmp_path / "s")]):
        result = CliRunner().invoke(app, [*command, "--storage", url, "--json"])
        assert result.exit_code == 2, result.output
        body = json.loads(result.stdout)
        assert says in body["error"]["message"] and "s3cret" not in result.output
        assert "Traceback" not in result.output


def test_a_junk_study_db_is_one_message_with_exit_2(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(bytes(range(256)) * 40)
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 2, result.output
    assert "not an Optuna SQLite study" in json.loads(result.stdout)["error"]["message"]


def test_the_json_envelope_masks_the_storage_password(tmp_path, grid_curves, make_sweep, pg_url):
    path = make_sweep(grid_curves, budget={"n_trials": 2})
    url = pg_url.replace("tunepilot@", "tunepilot:s3cret@")  # trust auth: the password is not checked
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(tmp_path / "s"), "--storage", url, "--json"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout and json.loads(result.stdout)["storage"].startswith("postgresql+psycopg://")
    report = CliRunner().invoke(app, ["report", str(tmp_path / "s"), "--storage", url, "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["best"] is not None and (tmp_path / "s" / "leaderboard.json").is_file()


def test_a_resumed_seeded_sweep_proposes_new_params(tmp_path, grid_curves, make_sweep):
    # skip_duplicates off: a sampler re-seeded as before would replay its first four proposals exactly
    path = make_sweep(grid_curves, budget={"n_trials": 4})
    first = run_sweep(prepare(path, tmp_path / "s"))
    again = run_sweep(prepare(path, tmp_path / "s", n_trials=8))
    params = [tuple(sorted(r["params"].items())) for r in again["leaderboard"]]
    assert len(first["leaderboard"]) == 4 and len(params) == 8 and len(set(params)) == 8


def test_a_finished_random_sweep_runs_the_extra_trials_of_a_larger_n_trials(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves, budget={"n_trials": 6}, skip_duplicates=True)
    run_sweep(prepare(path, tmp_path / "s"))
    again = run_sweep(prepare(path, tmp_path / "s", n_trials=10))
    states = collections.Counter(r["state"] for r in again["leaderboard"])
    assert states["complete"] == 10 and again["stopped"].startswith("n_trials reached")
