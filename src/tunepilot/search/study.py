"""The Optuna study of a sweep: samplers and pruners by name, storage, and recovery after a kill.

The study lives in SQLite inside the sweep directory by default (`sqlite:///<dir>/study.db`), or
in any Optuna RDB given by URL (PostgreSQL for workers on several machines: tunepilot.search.workers).
Pruners see intermediate values at percent of each trial's own
schedule (step 20 = 20% of that trial's steps), so trials of different lengths meet at equal
fractions; min_resource / max_resource are in those percent units.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunepilot.errors import UserError
from tunepilot.search import optuna_adapter as adapter
from tunepilot.search.gain import GainPruner
from tunepilot.search.pruners import EnvelopePruner
from tunepilot.search.spec import Range, SweepSpec

HEARTBEAT_S = 30  # shared storages: a RUNNING trial without a heartbeat for GRACE_FACTOR x this is stale
GRACE_FACTOR = 3


@dataclass
class WorkerOptions:
    """How this process takes part in a study that other processes may share.

    index: this worker's number among those one `--gpus` started (None: started on its own);
    spawned: started by `--gpus`, whose parent holds the sweep-directory lock;
    heartbeat_s / grace_s: a trial whose worker sent no heartbeat for grace_s is failed and retried.
    """

    index: int | None = None
    spawned: bool = False
    heartbeat_s: int = HEARTBEAT_S
    grace_s: int | None = None

    @property
    def grace(self) -> int:
        return self.grace_s if self.grace_s is not None else GRACE_FACTOR * self.heartbeat_s


def make_sampler(spec: SweepSpec, seed: int | None = None, shared: bool = False) -> optuna.samplers.BaseSampler:
    """The sweep file's sampler. `seed` (see sampler_seed) replaces the file's seed; `shared`: other
    workers ask the same study, so TPE imputes their running trials (Optuna's constant_liar) unless
    the file says otherwise."""
    opts = dict(spec.sampler.options)
    file_seed = opts.pop("seed", None)
    seed = file_seed if seed is None else seed
    name = spec.sampler.name
    try:
        if name == "tpe":
            if shared:
                opts.setdefault("constant_liar", True)
            return optuna.samplers.TPESampler(seed=seed, **opts)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return AskTellGridSampler(_grid(spec), seed=seed)
        return _gp(seed, opts)
    except TypeError as e:
        raise UserError(f"sampler: bad option for {name} ({e})") from e


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, for ask/tell: it ends `optimize` with `study.stop()` once the grid is
    covered, which raises outside `optimize`; here the bayes protocol asks `is_exhausted` instead."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def _gp(seed: int | None, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    try:
        import scipy  # noqa: F401  (Optuna's GP sampler optimises its acquisition with scipy)
    except ImportError as e:
        raise UserError("sampler: gp needs scipy; install it with `pip install scipy`, or use tpe") from e
    return optuna.samplers.GPSampler(seed=seed, **opts)


def _grid(spec: SweepSpec) -> dict[str, list[Any]]:
    grid = {}
    for key, dist in spec.space.items():
        if isinstance(dist, list):
            grid[key] = [",".join(c) if isinstance(c, list) else c for c in dist]
        elif isinstance(dist, Range) and dist.step:
            n = int(round((dist.high - dist.low) / dist.step))
            grid[key] = [type(dist.low)(dist.low + i * dist.step) for i in range(n + 1)]
        else:
            raise UserError(f"space.{key}: the grid sampler needs a list of values or a range with a step")
    return grid


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    opts = spec.pruner.options
    every = max(1, round(spec.report_every * 100))
    try:
        if spec.pruner.name == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": every, **opts})
        if spec.pruner.name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                **{"min_resource": every, "max_resource": 100, "reduction_factor": 3, **opts}
            )
        if spec.pruner.name == "envelope":
            return EnvelopePruner(**opts)
        if spec.pruner.name == "gain":
            # its fallback is the envelope pruner; `envelope: {margin: ...}` passes that pruner's options
            own = {k: v for k, v in opts.items() if k != "envelope"}
            return GainPruner(fallback=EnvelopePruner(**opts.get("envelope", {})), **own)
        if spec.pruner.name == "percentile":
            return optuna.pruners.PercentilePruner(
                **{"percentile": 50.0, "n_startup_trials": 5, "n_warmup_steps": every, **opts}
            )
        if spec.pruner.name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": every, "reduction_factor": 3, **opts})
        return optuna.pruners.NopPruner()
    except TypeError as e:
        raise UserError(f"pruner: bad option for {spec.pruner.name} ({e})") from e


def sampler_seed(seed: int | None, n_trials: int, worker: WorkerOptions | None, shared: bool) -> int | None:
    """The seed this process's sampler starts from: never the same twice for one study.

    A sampler re-seeded with the file's seed replays its earlier proposals, so a resumed sweep (or a
    second worker) would propose the very configurations already trained. The file's seed is used
    as it is only for the first run of a study by one process (so that run is reproducible); a
    resume mixes in the number of trials already stored, and a worker of a shared study also its
    index, host and pid (workers on different machines may start at the same count). No seed in the
    file: None, Optuna's own random seed.
    """
    if seed is None:
        return None
    if not shared and n_trials == 0:
        return seed
    parts = [str(seed), str(n_trials)]
    if shared:
        index = "" if worker is None or worker.index is None else str(worker.index)
        parts += [index, socket.gethostname(), str(os.getpid())]
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "little")


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def redact_url(url: str | None) -> str | None:
    """A storage URL as it may be printed: its password replaced by ***."""
    if not url or url == "memory":
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing in it can be told apart as a password
        return url.split("@", 1)[-1] if "@" in url else url


def normalize_url(url: str) -> str:
    """`postgresql://` means the psycopg2 driver to SQLAlchemy; tunepilot installs psycopg (3), so a
    plain PostgreSQL URL is given that driver when psycopg2 is absent."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


DRIVERS = {
    # no brackets (psycopg[binary]): the message is printed as rich markup
    "postgresql": "the PostgreSQL driver is missing; install it with `pip install psycopg psycopg-binary` "
    "(and write the URL as postgresql+psycopg://...)",
    "mysql": "the MySQL driver is missing; install it with `pip install PyMySQL` (URL mysql+pymysql://...)",
}


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn what SQLAlchemy and the drivers raise for a bad storage into one message (exit 2)."""
    import sqlalchemy.exc as sa

    shown = redact_url(url)
    try:
        yield
    except (ImportError, sa.NoSuchModuleError) as e:
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        if dialect in DRIVERS and isinstance(e, ImportError):
            raise UserError(f"--storage {shown}: {DRIVERS[dialect]}") from None
        raise UserError(
            f"--storage {shown}: no database driver for {url.split(':', 1)[0]!r}; use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB (pip install psycopg psycopg-binary)"
        ) from None
    except sa.ArgumentError as e:
        raise UserError(f"--storage {shown}: not a database URL ({_first_line(e)}); e.g. sqlite:///PATH") from None
    except (sa.DatabaseError, optuna.exceptions.StorageInternalError) as e:
        cause = getattr(e, "orig", None) or e.__cause__ or e
        text = _first_line(cause)
        if url.startswith("sqlite") and "not a database" in text:
            raise UserError(
                f"{make_url_path(url)}: not an Optuna SQLite study ({text}); move the file away or use another --dir"
            ) from None
        raise UserError(f"--storage {shown}: cannot use the database: {text}") from None
    except RuntimeError as e:
        if "compatible with the table schema" in str(e):  # Optuna's check of the stored schema version
            raise UserError(f"--storage {shown}: {_first_line(e)}") from None
        raise


def make_url_path(url: str) -> str:
    return url.split(":///", 1)[-1]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def open_storage(url: str, worker: WorkerOptions | None = None) -> optuna.storages.BaseStorage:
    """Optuna's storage for a URL. With `worker`, trials carry heartbeats (Optuna's RDB heartbeat
    table) so that a dead worker's trials are found by the others.

    Several processes creating the tables of a fresh database at once make Optuna's set-up race
    (`UNIQUE constraint failed: alembic_version`, `table ... already exists`): the set-up runs under
    a database-wide lock (workers.init_lock), which Optuna and SQLAlchemy do not take themselves.
    """
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    from tunepilot.search.workers import init_lock

    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if worker is not None:
        kwargs = {"heartbeat_interval": int(worker.heartbeat_s), "grace_period": int(worker.grace)}
    engine_kwargs: dict[str, Any] = {}
    path = url.split(":///", 1)[1] if url.startswith("sqlite:///") else ""
    if path and path != ":memory:" and not Path(path).parent.is_dir():
        raise UserError(f"--storage {url}: the directory {Path(path).parent} does not exist; create it first")
    if url.startswith("sqlite"):
        # several local workers write one file: wait for SQLite's write lock instead of failing at 5 s
        engine_kwargs = {"connect_args": {"timeout": 120}}
    with storage_errors(url):
        if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "postgres", "mysql"):
            raise UserError(
                f"--storage {redact_url(url)}: not an Optuna RDB URL; use sqlite:///PATH or "
                "postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        with init_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def check_storage(url: str) -> None:
    """Open a storage once, before anything else reads it: a bad URL, a missing driver, an unreachable
    server or a junk study.db is one message (exit 2), and a fresh database gets its tables here,
    under the set-up lock, before other readers of the same command open it."""
    storage = open_storage(url)
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def open_study(
    spec: SweepSpec,
    storage_url: str,
    name: str,
    direction: str,
    shared: bool = False,
    sampler=None,
    pruner=None,
    worker: WorkerOptions | None = None,
) -> optuna.Study:
    """Create or load the study; a resumed study must optimise the same objective direction.

    `shared`: other workers may ask the same study: it is opened as a WorkerStudy (heartbeats from
    a thread, stale trials of dead workers failed and retried, one ask at a time across workers).
    The sampler's seed is derived by sampler_seed, so no process replays another's proposals.
    """
    worker = (worker or WorkerOptions()) if shared else None
    storage = open_storage(storage_url, worker)
    with storage_errors(storage_url):
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once the stored trials are counted
            pruner=pruner or make_pruner(spec),
        )
        if shared:
            from tunepilot.search.workers import WorkerStudy

            study = WorkerStudy(name, storage, study.pruner, worker, storage_url)
        n = len(study.get_trials(deepcopy=False))
    study.sampler = sampler or make_sampler(spec, sampler_seed(_file_seed(spec), n, worker, shared), shared)
    if study.direction.name.lower() != direction:
        raise UserError(
            f"study {name!r} in {redact_url(storage_url)} was created to {study.direction.name.lower()}; "
            f"the sweep file asks to {direction}; use another study_name or sweep directory"
        )
    return study


def _file_seed(spec: SweepSpec) -> int | None:
    seed = spec.sampler.options.get("seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


INTERRUPTED = "interrupted (process killed or stopped)"


def recover_interrupted(study: optuna.Study, exclusive: bool) -> list[int]:
    """Mark trials left RUNNING by a kill as failed and enqueue each for one retry with the same params.

    `exclusive`: this process is the only worker (the sweep-dir lock), so every RUNNING trial is
    left over; with a shared storage only trials whose heartbeat went stale are (workers.fail_stale,
    which the workers also run periodically).
    """
    if not exclusive:
        from tunepilot.search.workers import fail_stale

        return fail_stale(study)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        adapter.set_trial_user_attr(study, adapter.trial_id(t), "reason", INTERRUPTED)
        adapter.set_trial_user_attr(study, adapter.trial_id(t), "failure", "interrupted")
        study.tell(t.number, state=TrialState.FAIL)
    for t in stale:
        if t.user_attrs.get("retry_of") is None:
            enqueue_retry(study, t.params, t.user_attrs, t.number)
    return [t.number for t in stale]


# user attrs a retry inherits: where the protocol is, config overrides, which keys it searches
RETRY_ATTRS = ("stage", "stop_at", "overrides", "keys")


def enqueue_retry(
    study: optuna.Study, params: dict[str, Any], attrs: dict[str, Any], number: int, **changes: Any
) -> None:
    """Run a trial again, once, with the same params (the next `ask` pops it)."""
    kept = {k: v for k, v in attrs.items() if k in RETRY_ATTRS}
    study.enqueue_trial(params, user_attrs={**kept, **changes, "retry_of": number})


class SweepLock:
    """One sweep per sweep directory: `sweep.lock` under an exclusive flock (io.RunDirLock), so two
    processes racing for the directory never both pass; a dead holder's lock is taken over at once
    (the kernel drops a dead process's flock) and only the holder removes the file.

    `tunepilot sweep --gpus` takes it in the parent for the directory's SQLite study; its workers
    are started with `--worker N` (WorkerOptions.spawned) and do not take it (sweep.run_sweep), and
    the lock's descriptor is not inherited by them (os.open is close-on-exec).
    """

    def __init__(self, sweep_dir: Path):
        from tunepilot.io import RunDirLock

        self.path = Path(sweep_dir) / "sweep.lock"
        self._lock = RunDirLock(
            sweep_dir, "sweep.lock", "sweep", "wait for it, or join it from another directory with --storage"
        )

    def __enter__(self) -> SweepLock:
        self._lock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)
