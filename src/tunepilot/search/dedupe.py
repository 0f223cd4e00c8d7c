"""Never pay twice for one configuration: a trial whose configuration already ran gets its result.

Samplers propose points in a continuous space; what an engine trains is coarser (the replay engine
trains the nearest recorded configuration; any engine trains the same config for the same resolved
values). When the sampler has converged it keeps proposing the incumbent, and without this check
each proposal is a full, identical training run. A configuration's key is the engine's
`config_key(spec)` when it has one (replay: the recorded run it maps to), else the resolved
RunConfig without its output directory; the key includes the share of the schedule the trial may
run (`stop_at`), so a protocol's deliberate re-run at a higher fidelity is not a duplicate.

What happens to a duplicate depends on who chose it (`Ask.on_duplicate`):
- "reject" (a sampler's proposal): it is failed at zero cost with reason "duplicate of trial N" and
  does not count toward n_trials. Samplers ignore failed trials, so the sampler proposes again
  (TPE's proposals are random draws from its model); telling it the twin's value instead would
  give the incumbent's point extra weight and pull TPE back onto it. On the replayed DeBERTa curves
  rejecting beats copying (bench/BENCHMARKS.md).
- "copy" (a protocol's own choice, an enqueued trial): it is told exactly what its twin was told
  (intermediate values, state, value) at zero cost, so the protocol moves on as if it had run.
After `patience` duplicates in a row the search has converged and the loop stops.

Workers sharing a study (tunepilot.search.workers) see each other's configurations in the storage,
RUNNING ones included: `claim` looks for a twin and, if there is none, writes the trial's key, as
one step across workers (the study's mutex), so two workers never both train one configuration. A
twin still running elsewhere has no result to copy yet: the trial is then rejected like a sampler's
duplicate.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunepilot.engines.base import TrialSpec
from tunepilot.search.workers import is_worker_study, turn


def config_key(engine: Any, spec: TrialSpec, stop_at: float) -> str | None:
    if hasattr(engine, "config_key"):
        key = engine.config_key(spec)
    elif hasattr(spec.config, "model_dump"):
        raw = spec.config.model_dump(mode="json")
        raw.get("output", {}).pop("output_dir", None)
        key = json.dumps(raw, sort_keys=True)
    else:
        return None
    return None if key is None else f"{key}@{stop_at:.4f}"


class Seen:
    def __init__(self, study: optuna.Study, patience: int = 25):
        self.study, self.patience, self.in_row = study, patience, 0
        self.keys: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if "config_key" in t.user_attrs:
                self.keys.setdefault(t.user_attrs["config_key"], t.number)

    def twin(self, key: str | None) -> FrozenTrial | None:
        number = self.keys.get(key) if key is not None else None
        return None if number is None else self.study.get_trials(deepcopy=False)[number]

    def claim(self, trial: optuna.Trial, key: str | None) -> FrozenTrial | None:
        """The trial that already ran (or, shared, runs) this configuration; if none, the configuration
        is claimed for `trial` (its `config_key` user attr) before any other worker can look."""
        if key is None:
            return None
        with turn(self.study):
            twin = self._stored_twin(trial.number, key) if is_worker_study(self.study) else self.twin(key)
            if twin is None:
                trial.set_user_attr("config_key", key)
        return twin

    def _stored_twin(self, number: int, key: str) -> FrozenTrial | None:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        same = [
            t
            for t in self.study.get_trials(deepcopy=False, states=states)
            if t.number != number and t.user_attrs.get("config_key") == key
        ]
        return min(same, key=lambda t: (t.state == TrialState.RUNNING, t.number), default=None)

    def add(self, trial: optuna.Trial, state: str) -> None:
        key = trial.user_attrs.get("config_key")
        if key is not None and state in ("complete", "pruned"):
            self.keys.setdefault(key, trial.number)

    def settle(self, trial: optuna.Trial, twin: FrozenTrial, mode: str) -> None:
        """End a duplicate at zero cost: reject it (failed) or copy its twin's result."""
        trial.set_user_attr("duplicate_of", twin.number)
        for key in ("steps", "seconds", "tokens", "gpu_hours"):
            trial.set_user_attr(key, 0)
        self.in_row += 1
        if mode == "reject" or twin.state == TrialState.RUNNING:
            where = " (running in another worker)" if twin.state == TrialState.RUNNING else ""
            trial.set_user_attr("reason", f"duplicate of trial {twin.number}{where}: not trained, proposed again")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)
        trial.set_user_attr("reason", f"same configuration as trial {twin.number}: its result, no training")
        if twin.state == TrialState.COMPLETE:
            self.study.tell(trial, twin.value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)

    @property
    def converged(self) -> bool:
        return self.in_row >= self.patience
