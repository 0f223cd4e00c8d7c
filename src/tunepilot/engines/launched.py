"""The standard engine's trials on N processes: each trial is `tunepilot train --nproc N`.

A trial whose config plans several data-parallel processes (`train.nproc` > 1, as `transfer
--target-gpus N` writes it) cannot run inside the search's own process. This engine starts it as
`tunepilot train CONFIG --nproc N` (torchrun, DDP or FSDP2 as the config says) in a session of
its own and follows it through its run directory: every eval point rank 0 writes to metrics.jsonl is
a Report (the fraction from the `run_start` event's planned steps), and summary.json is the Outcome.
`stop` ends the whole process group (the launcher and every rank). Pilots of a multi-GPU target
(`transfer --pilot`) and sweeps over a multi-GPU base run through it.

Reports come at the run's own eval steps (`eval_steps`, default a tenth of the schedule), not at the
spec's fractions: the sweep's loop places every report on its percent grid by fraction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunepilot.engines.base import Outcome, Progress, Report, TrialSpec
from tunepilot.engines.recorder import prepare_run_dir
from tunepilot.engines.standard import OneTrialEngine, supports_task_metric
from tunepilot.engines.summary import FailureKind, read_summary
from tunepilot.errors import UserError
from tunepilot.io import RunDirLock
from tunepilot.stream import EvalPoint, Event, from_dict

POLL_S = 0.2  # how often a running trial's metrics file is read
LOG_TAIL = 2000  # characters of a failed trial's output given as its reason


class LaunchedEngine(OneTrialEngine):
    name = "launched"

    def __init__(self, objective: str = "eval_loss", poll_s: float = POLL_S):
        if not supports_task_metric(objective):
            raise UserError(f"objective.metric: {objective!r} is neither eval_loss nor a task metric")
        self.objective, self.poll_s = objective, poll_s
        self.seconds = {"train": 0.0}
        self._trial: TrialSpec | None = None
        self._proc: subprocess.Popen | None = None
        self._stream: _StreamTail | None = None
        self._t0 = 0.0

    def start(self, spec: TrialSpec) -> None:
        if spec.run_dir is None:
            raise UserError(f"trial {spec.number}: a launched trial needs a run directory to be followed through")
        run_dir = Path(spec.run_dir)
        # a reused trial directory is cleared now (under its lock: never a live run's), as the trial's
        # rank 0 would clear it only later: the tail below must never follow an earlier run's stream
        # that is then replaced, nor _finish read an earlier summary.json
        with RunDirLock(run_dir):
            prepare_run_dir(run_dir, spec.config, overwrite=True)
        config_path = _write_config(spec, run_dir, self.objective)
        argv = ["train", str(config_path), "--nproc", str(spec.config.train.nproc), "--json"]
        self._take_slot(spec)
        log = (run_dir.parent / f"{run_dir.name}.log").open("w")
        self._t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tunepilot.cli.app", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the launcher and every rank it starts
        )
        log.close()
        self._stream = _StreamTail(run_dir / "metrics.jsonl")

    def advance(self) -> list[Progress]:
        if self._trial is None:
            return []
        while True:
            reports = self._reports()
            if reports:
                return reports
            if self._proc.poll() is not None:
                return [*self._reports(), self._finish()]
            time.sleep(self.poll_s)

    def stop(self, number: int, reason: str) -> Outcome:
        _end_group(self._proc)
        return self._outcome("pruned", reason=reason)

    def close(self) -> None:
        if self._proc is not None:
            _end_group(self._proc)

    # ----------------------------------------------------------------------------------------------
    def _reports(self) -> list[Report]:
        out = []
        for record in self._stream.new_records():
            if isinstance(record, EvalPoint) and record.step > 0 and self._stream.planned:
                value = _objective(record, self._stream.objective)
                if value is not None:
                    fraction = round(record.step / self._stream.planned, 6)
                    out.append(Report(self._trial.number, fraction=fraction, step=record.step, value=value))
        return out

    def _finish(self) -> Outcome:
        summary_path = Path(self._trial.run_dir) / "summary.json"
        if not summary_path.is_file():  # the processes died before the recorder could write it
            return self._outcome("failed", reason=self._log_tail(), failure=FailureKind.ERROR)
        summary = read_summary(summary_path)
        if summary.ok:
            return self._outcome("complete", value=summary.objective.best, summary=summary)
        failure = summary.failure or FailureKind.ERROR
        return self._outcome("failed", reason=summary.stop_reason.code, failure=failure, summary=summary)

    def _outcome(self, state, value=None, reason=None, failure=None, summary=None) -> Outcome:
        seconds = time.perf_counter() - self._t0
        self.seconds["train"] += seconds
        outcome = Outcome(
            self._trial.number,
            state,
            value=value,
            reason=reason,
            failure=failure,
            steps=summary.steps if summary else 0,
            seconds=seconds,
            tokens=summary.tokens if summary else 0,
            extra={"engine": self.name, "nproc": self._trial.config.train.nproc},
        )
        self._trial = self._proc = self._stream = None
        return outcome

    def _log_tail(self) -> str:
        """Why the trial's processes failed: the error rank 0 reported (its JSON envelope), else the
        end of their output. Other ranks, stopped by the launcher mid-import, can print tracebacks
        long enough to push rank 0's message out of any fixed tail."""
        run_dir = Path(self._trial.run_dir)
        log = run_dir.parent / f"{run_dir.name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        error = _reported_error(text)
        return f"exit code {self._proc.returncode}: {error or text[-LOG_TAIL:].strip()}"


def _reported_error(text: str) -> str | None:
    """The message and problems of the first `--json` error envelope in a trial's output."""
    decoder = json.JSONDecoder()
    start = text.find('{\n  "version"')
    while start >= 0:
        try:
            body, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return "; ".join([str(error["message"]), *map(str, error.get("problems") or [])])
        start = text.find('{\n  "version"', start + 1)
    return None


def _write_config(spec: TrialSpec, run_dir: Path, objective: str) -> Path:
    """The trial's config as a YAML file beside its run directory, training into that directory."""
    from tunepilot.config import dump_config

    config = spec.config.model_copy(deep=True)
    config.output.output_dir = str(run_dir)
    config.output.overwrite_output_dir = True  # a trial's directory is the search's to reuse
    if objective != "eval_loss":
        config.evaluate.metric, config.evaluate.objective = objective, True
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(dump_config(config))
    return path


def _objective(point: EvalPoint, objective: str) -> float | None:
    """The value of the run's objective (named by its `run_start` event, as its recorder knows it)."""
    return point.eval_loss if objective == "eval_loss" else point.metrics.get(objective)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the trial's process group, SIGKILL if it has not ended after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class _StreamTail:
    """The records appended to a metrics.jsonl since the last read (whole lines only).

    The offset counts bytes of one file: if the stream is replaced or truncated once some of it has
    been read (a second writer's `truncate_after`, an earlier run's stream cleared), it points into
    another file, possibly mid-record. That is an error, named here, not lines parsed from the middle
    of records (a JSONDecodeError on '"}') or records silently skipped."""

    def __init__(self, path: Path):
        self.path, self.offset, self.planned, self.objective = path, 0, 0, "eval_loss"
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the offset counts

    def new_records(self) -> list:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return []
        with f:
            stat = os.fstat(f.fileno())
            if self.offset and ((stat.st_dev, stat.st_ino) != self._file or stat.st_size < self.offset):
                raise RuntimeError(
                    f"{self.path}: replaced or truncated after {self.offset} bytes of it were read; "
                    "a run's stream must only grow while it is followed (one writer, rank 0)"
                )
            self._file = (stat.st_dev, stat.st_ino)
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = [from_dict(json.loads(line)) for line in complete.decode().splitlines() if line.strip()]
        for r in records:
            if isinstance(r, Event) and r.code == "run_start":
                self.planned = int(r.data.get("planned_steps", 0))
                self.objective = r.data.get("objective", "eval_loss")
        return records
