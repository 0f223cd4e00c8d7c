"""The Optuna study of a sweep: samplers and pruners by name, storage, and recovery after a kill.

The study lives in SQLite inside the sweep directory by default (`sqlite:///<dir>/study.db`), or
in any Optuna RDB given by URL. Pruners see intermediate values at percent of each trial's own
schedule (step 20 = 20% of that trial's steps), so trials of different lengths meet at equal
fractions; min_resource / max_resource are in those percent units.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunepilot.errors import UserError
from tunepilot.search.gain import GainPruner
from tunepilot.search.pruners import EnvelopePruner
from tunepilot.search.spec import Range, SweepSpec

HEARTBEAT_S = 30  # external storages: a RUNNING trial without a heartbeat for 3x this is stale


def make_sampler(spec: SweepSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    opts = spec.sampler.options
    seed = opts.pop("seed", seed)
    name = spec.sampler.name
    try:
        if name == "tpe":
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


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_study(
    spec: SweepSpec,
    storage_url: str,
    name: str,
    direction: str,
    shared: bool = False,
    sampler=None,
    pruner=None,
) -> optuna.Study:
    """Create or load the study; a resumed study must optimise the same objective direction.

    `shared`: other workers may use the storage; trials then send heartbeats so that a killed
    worker's trials are recognised as stale (Optuna's heartbeat; it warns that it is meant for
    `optimize`, which is silenced here because the slot loop records the heartbeats itself).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    if storage_url.startswith(("sqlite", "postgresql", "mysql", "oracle", "mssql")):
        beat = {"heartbeat_interval": HEARTBEAT_S, "grace_period": 3 * HEARTBEAT_S} if shared else {}
        storage: Any = optuna.storages.RDBStorage(storage_url, **beat)
    elif storage_url == "memory":
        storage = optuna.storages.InMemoryStorage()
    else:
        raise UserError(f"--storage: {storage_url!r} is not an Optuna RDB URL (sqlite:///..., postgresql://...)")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        load_if_exists=True,
        sampler=sampler or make_sampler(spec),
        pruner=pruner or make_pruner(spec),
    )
    if study.direction.name.lower() != direction:
        raise UserError(
            f"study {name!r} in {storage_url} was created to {study.direction.name.lower()}; "
            f"the sweep file asks to {direction}; use another study_name or sweep directory"
        )
    return study


def recover_interrupted(study: optuna.Study, exclusive: bool) -> list[int]:
    """Mark trials left RUNNING by a kill as failed and enqueue each for one retry with the same params.

    `exclusive`: this process is the only worker (the sweep-dir lock), so every RUNNING trial is
    left over; with a shared storage only trials whose heartbeat went stale are.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if exclusive:
        stale = list(running)
        for t in stale:
            optuna.trial.Trial(study, t._trial_id).set_user_attr("reason", "interrupted (process killed or stopped)")
            study.tell(t.number, state=TrialState.FAIL)
    else:
        optuna.storages.fail_stale_trials(study)  # Optuna's heartbeat check: FAILs trials without a pulse
        now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        stale = [t for t in running if now.get(t.number) == TrialState.FAIL]
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
    """One worker per sweep directory: a lock file holding the pid; a dead holder's lock is taken over."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / "sweep.lock"

    def __enter__(self) -> SweepLock:
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise UserError(
                    f"{self.path.parent}: another sweep (pid {pid}) is running here; wait for it, "
                    "or join it from another directory with --storage"
                )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) still answers kill(0); /proc says it is dead
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z" in stat.read_text())
