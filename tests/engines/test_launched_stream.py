"""The launched engine follows rank 0's metrics.jsonl while the trial runs: one writer, one file.

In CI the contract test's launched trial once failed with a JSONDecodeError on the "line" '"}': with
`device: auto` on a machine without a GPU, accelerate was not told it runs on CPU and made each
torchrun process a lone rank 0 of a world of 1. Both wrote the stream, and the second one's
`truncate_after` replaced the file under the offset the tail had already read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tunepilot.config import build_config
from tunepilot.engines.base import TrialSpec
from tunepilot.engines.launched import LaunchedEngine, _StreamTail
from tunepilot.errors import UserError
from tunepilot.io import RunDirLock
from tunepilot.stream import EvalPoint, Event, MetricsWriter, TrainStep

RUN_START = Event(  # rank 0's first record, 194 bytes as JSONL
    step=0,
    code="run_start",
    message="standard run of 4 planned steps",
    data={"planned_steps": 4, "engine": "standard", "objective": "eval_loss"},
)


def _rank_of(rank: int, port: int) -> subprocess.Popen:
    """One of two torchrun-like processes (its launcher's environment) that joins the group and says
    which rank of what world it is. No GPU: `device: auto` is the CPU."""
    env = {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    script = (
        "import json\n"
        "from tunepilot.engines.distributed import Distributed\n"
        "d = Distributed.from_env('auto')\n"
        "print(json.dumps([d.rank, d.world, d.is_main]))\n"
        "d.close()\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_launched_processes_with_device_auto_on_cpu_are_one_group_with_one_main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_rank_of(rank, port) for rank in (0, 1)]
    seen = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
        seen.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert seen == [[0, 2, True], [1, 2, False]]  # not two lone rank 0s, each writing the stream


def test_a_launcher_world_accelerate_does_not_join_is_refused(monkeypatch):
    import accelerate

    class LoneProcess:  # what accelerate makes of a device it has no distributed backend for
        num_processes, distributed_type = 1, "NO"

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", LoneProcess)
    monkeypatch.setenv("WORLD_SIZE", "2")
    from tunepilot.engines.distributed import Distributed

    with pytest.raises(UserError, match="started 2 processes but accelerate joined 1"):
        Distributed.from_env("cpu")


def test_the_tail_names_a_stream_replaced_under_it_instead_of_parsing_mid_record(tmp_path):
    """The CI failure, byte for byte: rank 1 writes run_start, its baseline eval and step 1; the tail
    reads them; rank 0 opens the same stream, its truncate_after keeps the step-0 records (a new file)
    and appends its own run_start, whose last 3 bytes lie past the tail's offset."""
    path = tmp_path / "metrics.jsonl"
    tail = _StreamTail(path)
    first = MetricsWriter(path)
    first.truncate_after(0)
    step_1 = TrainStep(  # 191 bytes, as in the CI run's stream
        step=1,
        loss=6.138248443603516,
        lr=0.0,
        grad_norm=0.123456789012345,
        epoch=0.0833,
        tokens=1000,
        input_tokens=2000,
        seconds=0.03,
        memory_mb=512.0,
    )
    for record in (RUN_START, EvalPoint(step=0, eval_loss=6.1594911555654), step_1):
        first.write(record)
    assert len(tail.new_records()) == 3 and tail.planned == 4
    second = MetricsWriter(path)
    second.truncate_after(0)
    second.write(RUN_START)
    assert path.read_bytes()[tail.offset :] == b'"}\n'  # what the reader parsed as a line
    with pytest.raises(RuntimeError, match="replaced or truncated after"):
        tail.new_records()
    first.close()
    second.close()


def test_the_tail_follows_one_writers_stream_through_its_start(tmp_path):
    """rank 0's recorder: open, truncate_after (a new, empty file), then only appends: every record
    once, a torn last line only when it is whole."""
    path = tmp_path / "metrics.jsonl"
    tail = _StreamTail(path)
    assert tail.new_records() == []  # not there yet
    writer = MetricsWriter(path)
    assert tail.new_records() == []
    writer.truncate_after(0)
    writer.write(RUN_START)
    writer._f.write('{"step": 1, "loss": 6.1')  # a line in flight
    writer._f.flush()
    assert [r.step for r in tail.new_records()] == [0]
    writer._f.write(', "kind": "train"}\n')
    writer.write(EvalPoint(step=2, eval_loss=6.0))
    assert [type(r) for r in tail.new_records()] == [TrainStep, EvalPoint]
    assert tail.new_records() == []
    writer.close()
    path.write_text("")  # truncated in place
    with pytest.raises(RuntimeError, match="replaced or truncated"):
        tail.new_records()


class _Launched:
    """subprocess.Popen for the engine: records the run directory at launch, starts nothing."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.seen = run_dir, None

    def __call__(self, argv, **kwargs):
        self.seen = sorted(p.name for p in self.run_dir.iterdir())
        self.pid, self.returncode = -1, 0
        return self

    def poll(self):
        return 0


def _reused_dir(tmp_path: Path) -> tuple[Path, TrialSpec]:
    run_dir = tmp_path / "trials" / "0000"
    run_dir.mkdir(parents=True)
    with MetricsWriter(run_dir / "metrics.jsonl") as old:  # an earlier run's stream and summary
        old.write(RUN_START)
        old.write(EvalPoint(step=4, eval_loss=1.0))
    (run_dir / "summary.json").write_text("{}")
    config = build_config({"model_name_or_path": "m", "dataset": "d.jsonl", "nproc": 2}, check_paths=False)[0]
    return run_dir, TrialSpec(0, {}, config, run_dir)


def test_a_reused_trial_directory_is_cleared_before_its_processes_start(tmp_path, monkeypatch):
    """Else the tail reads the earlier run's evals as this trial's reports, then the stream rank 0
    writes after clearing the directory under an offset that belongs to the old file."""
    run_dir, spec = _reused_dir(tmp_path)
    launched = _Launched(run_dir)
    monkeypatch.setattr(subprocess, "Popen", launched)
    engine = LaunchedEngine(poll_s=0.01)
    engine.start(spec)
    assert launched.seen == [] and engine._reports() == []
    engine.close()


def test_a_trial_directory_a_live_run_holds_is_left_alone(tmp_path, monkeypatch):
    run_dir, spec = _reused_dir(tmp_path)
    monkeypatch.setattr(subprocess, "Popen", _Launched(run_dir))
    engine = LaunchedEngine(poll_s=0.01)
    with RunDirLock(run_dir), pytest.raises(UserError, match="another tunepilot train"):
        engine.start(spec)
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "summary.json").is_file() and engine.active == []
