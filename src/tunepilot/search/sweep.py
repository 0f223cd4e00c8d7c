"""Run a sweep from its file: set up, resume, loop, write results. Top to bottom, one function each.

Re-running the same command resumes: the study is reopened, trials a kill left RUNNING are marked
failed and retried once with the same params, and the loop continues until the budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tunepilot.config import RunConfig
from tunepilot.engines.base import TrialSpec
from tunepilot.errors import UserError
from tunepilot.io import atomic_write_json, ensure_dir
from tunepilot.search import preflight
from tunepilot.search import space as space_mod
from tunepilot.search.budget import BudgetTracker
from tunepilot.search.loop import SlotLoop
from tunepilot.search.progress import with_progress
from tunepilot.search.protocols import PROTOCOLS
from tunepilot.search.registry import ENGINES, build_engine, engine_gpus
from tunepilot.search.results import leaderboard, write_results
from tunepilot.search.spec import SweepSpec, load_sweep
from tunepilot.search.study import SweepLock, WorkerOptions, default_storage, open_study, recover_interrupted
from tunepilot.search.workers import stop_heartbeats


@dataclass
class SweepSetup:
    spec: SweepSpec
    base: RunConfig | None
    sweep_dir: Path
    storage: str
    study_name: str
    force_resume: bool = False  # resume the study even if it was created from another spec
    worker: WorkerOptions | None = None  # heartbeats, and a --gpus worker's index (search.workers)


def prepare(
    path: str | Path,
    sweep_dir: str | Path | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    overrides: list[str] | None = None,
    force_resume: bool = False,
) -> SweepSetup:
    spec, base = load_sweep(path, overrides)
    if n_trials is not None:
        if n_trials < 1:
            raise UserError(f"--n-trials {n_trials}: give at least 1 trial")
        spec.budget.n_trials = n_trials
    if ENGINES[spec.engine.name].config_keys:
        space_mod.check_space(spec, base)
        preflight.check_before_start(spec, base)  # template fits the tokenizer; keys the engine trains
    out = Path(sweep_dir or spec.output_dir or Path("sweeps") / Path(path).stem)
    url = storage or spec.storage or default_storage(out)
    return SweepSetup(spec, base, out, url, spec.study_name or Path(path).stem, force_resume)


def run_sweep(setup: SweepSetup, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    spec, base, sweep_dir = setup.spec, setup.base, setup.sweep_dir
    log = log or (lambda msg: None)
    ensure_dir(sweep_dir, "sweep directory (--dir)")
    in_dir = setup.storage == default_storage(sweep_dir)
    exclusive = in_dir and not (setup.worker and setup.worker.spawned)  # --gpus: the parent holds the lock
    with SweepLock(sweep_dir) if exclusive else _nothing():
        record = preflight.spec_record(spec, base)
        preflight.check_study_spec(setup.storage, setup.study_name, record, setup.force_resume, str(sweep_dir))
        from tunepilot.tracking import sweep_tracker  # the base config's report_to: a parent run per sweep

        tracker = sweep_tracker(spec, base, sweep_dir, setup.study_name)
        engine = build_engine(spec, base, sweep_dir)
        compiled = getattr(engine, "compiled", None)  # an engine that compiles: what it resolved to
        try:
            metric, direction = spec.objective.resolved(getattr(engine, "default_metric", "eval_loss"))
            study = open_study(
                spec, setup.storage, setup.study_name, direction, shared=not exclusive, worker=setup.worker
            )
            study.log = log
            study.set_user_attr("objective", {"metric": metric, "direction": direction})
            study.set_user_attr("protocol", spec.protocol.name)
            preflight.store_spec(study, record)
            log = with_progress(log, study, spec.budget)
            retried = recover_interrupted(study, exclusive)
            if retried:
                log(f"resuming: trial(s) {retried} were interrupted; marked failed and retried once")
            _enqueue_first(study, spec)
            _write_meta(setup, in_dir)
            loop = build_loop(spec, study, engine, base, sweep_dir, log)
            try:
                why = loop.run()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the completed trials' results still count
                write_results(sweep_dir, study, base)
                raise
        finally:
            engine.close()
            stop_heartbeats()
        seconds = getattr(engine, "seconds", None)  # the engine's own time split, where it keeps one
        results = write_results(sweep_dir, study, base)
        tracker.on_sweep_end(study, {**results, "stopped": why})  # trial states, reasons, costs; best tagged
    return {
        "sweep_dir": str(sweep_dir),
        "storage": setup.storage,
        "study": setup.study_name,
        "objective": {"metric": metric, "direction": direction},
        "stopped": why,
        "resumed_trials": retried,
        "leaderboard": leaderboard(study),
        "decisions": study.user_attrs.get("decisions", []),
        "engine_slots": engine.slots,  # what `slots: auto` chose
        **({"engine_compiled": compiled} if compiled is not None else {}),  # and `compile: auto`
        **({"engine_seconds": dict(seconds)} if seconds else {}),
        **results,
    }


def build_loop(
    spec: SweepSpec,
    study: optuna.Study,
    engine: Any,
    base: RunConfig | None,
    sweep_dir: Path,
    log: Callable[[str], None] | None = None,
) -> SlotLoop:
    """The protocol and the slot loop over an open study and a built engine (also used by bench/)."""
    protocol = PROTOCOLS[spec.protocol.name](spec, study, space_mod.distributions(spec), base, spec.protocol.options)
    return SlotLoop(
        study,
        engine,
        protocol,
        BudgetTracker(spec.budget, study),
        make_spec=_spec_maker(base, sweep_dir, spec.eval_points),
        every=spec.report_every,
        oom_overrides=lambda t: oom_overrides(t, base),
        gpus=engine_gpus(base) if base else 0.0,
        price=spec.budget.price_per_gpu_hour,
        log=log,
        skip_duplicates=spec.skip_duplicates,
    )


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _write_meta(setup: SweepSetup, exclusive: bool) -> None:
    """What `tunepilot report` needs to find the study again; a shared storage URL may hold a
    password, so only the sweep-dir default is written (pass --storage to report the others)."""
    meta = {
        "study_name": setup.study_name,
        "storage": setup.storage if exclusive else None,
        "spec": setup.spec.model_dump(mode="json"),
        # the resolved base config, so `tunepilot report` can write best.yaml from any machine
        "base": setup.base.model_dump(mode="json") if setup.base is not None else None,
    }
    atomic_write_json(setup.sweep_dir / "sweep.json", meta)


def _enqueue_first(study: optuna.Study, spec: SweepSpec) -> None:
    """The sweep file's `enqueue:` trials, once (skip_if_exists makes a resumed run not repeat them)."""
    for params in spec.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)


def _spec_maker(base: RunConfig | None, sweep_dir: Path, eval_points: int = 10) -> Callable[[optuna.Trial], TrialSpec]:
    fractions = tuple(round((i + 1) / eval_points, 6) for i in range(eval_points))

    def make(trial: optuna.Trial) -> TrialSpec:
        overrides = trial.user_attrs.get("overrides") or {}
        run_dir = sweep_dir / "trials" / f"{trial.number:04d}"
        if base is None:
            return TrialSpec(trial.number, trial.params, {"overrides": overrides}, run_dir)
        config = space_mod.trial_config(base, trial.params, overrides)
        config.output.output_dir = str(run_dir)
        config.output.overwrite_output_dir = True  # a retried trial starts its run over
        return TrialSpec(trial.number, trial.params, config, run_dir, report_fractions=fractions)

    return make


def oom_overrides(trial: optuna.Trial, base: RunConfig | None) -> dict[str, Any] | None:
    """Half the micro-batch, twice the accumulation: the same effective batch in less memory."""
    merged = {**trial.params, **(trial.user_attrs.get("overrides") or {})}
    bs = merged.get("per_device_train_batch_size", base.train.per_device_train_batch_size if base else None)
    ga = merged.get("gradient_accumulation_steps", base.train.gradient_accumulation_steps if base else 1)
    if bs is None or int(bs) < 2 or int(bs) % 2:  # an odd micro-batch cannot keep the effective batch
        return None
    return {"per_device_train_batch_size": int(bs) // 2, "gradient_accumulation_steps": int(ga) * 2}
