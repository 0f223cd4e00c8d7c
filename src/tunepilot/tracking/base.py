"""The adapter between a run's metrics stream and one tracker, and the rules every tracker keeps.

    TrackerObserver(backend)        an Observer: each record becomes a call on the backend
      backend.start(context)        open a run (params, tags, its parent in a sweep)
      backend.log_metrics(step, m)  a train step's or an evaluation's numbers
      backend.log_event(event)      a health alert, a stop, a resume
      backend.end(summary)          the summary, the artifacts, the run's final state

A tracker never stops or slows a run: every call runs on one background thread (`tunepilot-tracking`)
in the order the records came, so a slow server delays only the tracker. The first exception of a
backend (package missing, server down, bad credentials) is logged once as a warning and the backend
is switched off for the rest of the run; the run goes on. At the end a run waits at most
`tracking.flush_timeout` seconds for what is still queued.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from tunepilot.engines.observers import Observer, RunControl, RunInfo
from tunepilot.stream import EvalPoint, Event, Record, TrainStep
from tunepilot.tracking.secrets import redact_params

log = logging.getLogger("tunepilot.tracking")
_warned: set[str] = set()  # one warning per tracker and cause in a process, however many runs
_warned_lock = threading.Lock()


@dataclass
class RunContext:
    """What a backend needs to open a run."""

    run_dir: Path | None
    run_name: str
    settings: Any  # TrackingSettings
    params: dict[str, str]
    tags: dict[str, str]
    trial: int | None = None
    resumed_from: int = 0
    parent: dict[str, Any] = field(default_factory=dict)  # the sweep's tracking.json entry for this backend


class Backend(Protocol):
    name: str

    def start(self, ctx: RunContext) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_event(self, event: Event) -> None: ...
    def end(self, summary: Any) -> None: ...


class TrackingFailed(Exception):
    """A tracker cannot work here (package missing, server unreachable): its message says what to do."""


def warn_once(tracker: str, error: BaseException, warn: Callable[[str], None] | None = None) -> None:
    text = str(error) if isinstance(error, TrackingFailed) else f"{type(error).__name__}: {error}"
    key = f"{tracker}:{text}"
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    (warn or log.warning)(f"{tracker} tracking is off for this run: {text}; training goes on without it")


def reset_warnings() -> None:
    """Let every tracker warn again (a long-lived process starting a new batch of runs; tests)."""
    with _warned_lock:
        _warned.clear()


# -- the one background thread ----------------------------------------------------------------------
_tasks: queue.Queue = queue.Queue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _work() -> None:
    while True:
        task = _tasks.get()
        try:
            task()
        finally:
            _tasks.task_done()


def submit(task: Callable[[], None]) -> None:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="tunepilot-tracking", daemon=True)
            _worker.start()
    _tasks.put(task)


class TrackerObserver(Observer):
    """One backend fed by a run's stream, on the background thread; failures warn once."""

    def __init__(self, backend: Backend, settings: Any, warn: Callable[[str], None] | None = None):
        self.backend, self.settings, self.warn = backend, settings, warn
        self.failed = False

    def _call(self, fn: Callable, *args: Any) -> None:
        def task() -> None:
            if self.failed:
                return
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - any tracker error: warn once, never stop the run
                self.failed = True
                warn_once(self.backend.name, e, self.warn)

        submit(task)

    def on_start(self, info: RunInfo) -> None:
        self._call(self.backend.start, run_context(info, self.settings, self.backend.name))

    def on_record(self, record: Record, control: RunControl) -> None:
        if isinstance(record, Event):
            self._call(self.backend.log_event, record)
            return
        metrics = record_metrics(record)
        if metrics:
            self._call(self.backend.log_metrics, record.step, metrics)

    def on_end(self, summary: Any) -> None:
        done = threading.Event()
        self._call(self.backend.end, summary)
        submit(done.set)
        if not self.failed and not done.wait(self.settings.flush_timeout):
            self.failed = True  # what is still queued is dropped, not waited for
            warn_once(
                self.backend.name,
                TrackingFailed(
                    f"still sending after {self.settings.flush_timeout:g} s (tracking.flush_timeout); the rest of "
                    "this run's records are dropped"
                ),
                self.warn,
            )


def record_metrics(record: Record) -> dict[str, float]:
    """The numbers of a train step or evaluation, under the names every tracker shows."""
    out: dict[str, float] = {}
    if isinstance(record, TrainStep):
        for name, value in (
            ("loss", record.loss),
            ("learning_rate", record.lr),
            ("grad_norm", record.grad_norm),
            ("epoch", record.epoch),
            ("tokens", record.tokens),
            ("memory_mb", record.memory_mb),
        ):
            if value is not None:
                out[f"train/{name}"] = float(value)
    elif isinstance(record, EvalPoint):
        if record.eval_loss is not None:
            out["eval/loss"] = float(record.eval_loss)
        for name, value in record.metrics.items():
            if isinstance(value, (int, float)):
                out[f"eval/{name}"] = float(value)
    return out


def config_params(config: Any, sampled: dict[str, Any] | None = None) -> dict[str, str]:
    """The resolved config as flat `section.key` params (and a sweep trial's sampled values), redacted."""
    flat: dict[str, Any] = {}
    if config is not None:
        for section, values in config.model_dump(mode="json").items():
            for key, value in (values or {}).items():
                flat[f"{section}.{key}"] = value
    for key, value in (sampled or {}).items():
        flat[f"sampled.{key}"] = value
    return redact_params({k: _text(v) for k, v in flat.items()})


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def run_context(info: RunInfo, settings: Any, backend: str) -> RunContext:
    from tunepilot import __version__
    from tunepilot.tracking.sweep import parent_of

    run_dir = Path(info.run_dir) if info.run_dir is not None else None
    name = settings.run_name or (run_dir.name if run_dir is not None else "run")
    if info.trial is not None:
        name = f"trial-{info.trial:04d}"
    tags = {
        "tunepilot.engine": info.engine,
        "tunepilot.version": __version__,
        "tunepilot.run_dir": str(run_dir) if run_dir else "",
    }
    if info.trial is not None:
        tags["tunepilot.trial"] = str(info.trial)
    parent = parent_of(run_dir, backend) if info.trial is not None else {}
    return RunContext(
        run_dir, name, settings, config_params(info.config, info.params), tags, info.trial, info.resumed_from, parent
    )


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """A server that does not answer is found in seconds, not after a client's minutes of retries."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except OSError as e:
        raise TrackingFailed(f"{parts.scheme}://{parts.hostname}:{port} does not answer ({e.strerror or e})") from e


def require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackingFailed(f"{package} is not installed (pip install {package})") from e
