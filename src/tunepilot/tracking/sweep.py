"""A sweep in the trackers: one parent MLflow run with a nested run per trial, a W&B group, and
TensorBoard's HParams table.

    tracker = sweep_tracker(spec, base, sweep_dir, name)   # opens the parent run, writes tracking.json
    ... trials run; each trial's own observers (observers_for) nest under the parent ...
    tracker.on_sweep_end(study, results)                   # every trial's state, reason, costs; best tagged

`<sweep dir>/tracking.json` holds what a trial's tracker needs to join the sweep (the MLflow store,
experiment and parent run id; the W&B group), so trials nest whether they run in this process
(packed) or another. A resumed sweep reuses its parent run, and `on_trial_end` is idempotent: a
trial's nested run is found by its tags and updated, or created if the trial never opened one (a
failed start, a deduplicated configuration, the replay engine).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from tunepilot.io import atomic_write_json
from tunepilot.tracking.base import config_params, submit, warn_once
from tunepilot.tracking.secrets import redact_params

TRACKING_FILE = "tracking.json"
_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "FAILED"}
_COSTS = ("seconds", "steps", "tokens", "gpu_hours", "cost")


def parent_of(run_dir: Path | None, backend: str) -> dict[str, Any]:
    """The sweep's entry for `backend`, when `run_dir` is a trial directory (<sweep>/trials/NNNN)."""
    if run_dir is None:
        return {}
    path = Path(run_dir).parent.parent / TRACKING_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(backend, {})
    except (OSError, ValueError):
        return {}


class SweepTracker:
    def __init__(self, settings: Any, sweep_dir: Path, name: str, params: dict[str, str], warn=None):
        self.settings, self.sweep_dir, self.name, self.params, self.warn = settings, sweep_dir, name, params, warn
        self.failed: set[str] = set()
        self.mlflow: dict[str, Any] = {}
        self._run_on_worker(self._start)

    @property
    def report_to(self) -> list[str]:
        return [n for n in self.settings.report_to if n not in self.failed]

    def _run_on_worker(self, fn, *args) -> None:
        """Run after every record queued before it (trial runs exist by then), wait a bounded time."""
        done = threading.Event()

        def task() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        submit(task)
        if not done.wait(self.settings.flush_timeout + 5):
            for name in self.report_to:
                warn_once(name, TimeoutError("the sweep's tracker did not answer in time"), self.warn)

    def _guard(self, name: str, fn, *args) -> None:
        if name in self.failed:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracker never stops a sweep
            self.failed.add(name)
            warn_once(name, e, self.warn)

    # -- start ------------------------------------------------------------------------------------
    def _start(self) -> None:
        state = self._read_state()
        if "mlflow" in self.report_to:
            self._guard("mlflow", self._start_mlflow, state.get("mlflow", {}))
        if "wandb" in self.report_to:
            state["wandb"] = {"group": state.get("wandb", {}).get("group") or f"{self.name}-{self.sweep_dir.name}"}
        if self.mlflow:
            state["mlflow"] = self.mlflow
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.sweep_dir / TRACKING_FILE, state)

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.sweep_dir / TRACKING_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _start_mlflow(self, previous: dict[str, Any]) -> None:
        from mlflow.entities import Param

        from tunepilot.tracking.mlflow import open_experiment, resolve_uri

        uri = resolve_uri(self.settings, self.sweep_dir)
        client, experiment_id = open_experiment(uri, self.settings.mlflow_experiment_name, self.sweep_dir)
        run_id = previous.get("parent_run_id") if previous.get("tracking_uri") == uri else None
        if run_id is not None:  # a resumed sweep continues its parent run
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                experiment_id,
                run_name=self.name,
                tags={"tunepilot.kind": "sweep", "tunepilot.sweep_dir": str(self.sweep_dir)},
            )
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in sorted(self.params.items())]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])
        experiment = client.get_experiment(experiment_id)
        self.client = client
        self.mlflow = {
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "experiment_name": experiment.name,
            "parent_run_id": run_id,
        }

    # -- trials and the end -----------------------------------------------------------------------
    def on_trial_end(self, trial: Any, best: int | None = None) -> None:
        """A finished trial's state, reason and costs in its nested run; `best` marks the sweep's best."""
        self._run_on_worker(self._trial, trial, best)

    def on_sweep_end(self, study: Any, results: dict[str, Any]) -> None:
        self._run_on_worker(self._end, study, results)

    def _trial(self, trial: Any, best: int | None) -> None:
        if "mlflow" in self.report_to and self.mlflow:
            self._guard("mlflow", self._mlflow_trial, trial, best)
        if "tensorboard" in self.report_to:
            self._guard("tensorboard", self._tensorboard_trial, trial)

    def _end(self, study: Any, results: dict[str, Any]) -> None:
        best = (results.get("best") or {}).get("number")
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        for trial in trials:
            self._trial(trial, best)
        if "mlflow" in self.report_to and self.mlflow:
            self._guard("mlflow", self._mlflow_end, trials, results)
        if "wandb" in self.report_to:
            self._guard("wandb", self._wandb_end, trials, results)

    def _mlflow_trial(self, trial: Any, best: int | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client, parent = self.client, self.mlflow["parent_run_id"]
        found = client.search_runs(
            [self.mlflow["experiment_id"]],
            max_results=1,
            filter_string=(f"tags.`mlflow.parentRunId` = '{parent}' and tags.`tunepilot.trial` = '{trial.number}'"),
        )
        if found:
            run = found[0]
        else:
            run = client.create_run(
                self.mlflow["experiment_id"],
                run_name=f"trial-{trial.number:04d}",
                tags={"mlflow.parentRunId": parent, "tunepilot.trial": str(trial.number)},
            )
            params = config_params(None, trial.params)
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        state = trial.state.name.lower()
        tags = {"tunepilot.trial_state": state, "tunepilot.best": str(trial.number == best).lower()}
        if trial.user_attrs.get("reason"):
            tags["tunepilot.reason"] = str(trial.user_attrs["reason"])[:5000]
        attrs = trial.user_attrs
        values = {f"trial/{k}": attrs[k] for k in _COSTS if isinstance(attrs.get(k), (int, float))}
        if trial.value is not None:
            values["trial/value"] = trial.value
        step = int(trial.user_attrs.get("steps") or 0)
        client.log_batch(
            run.info.run_id,
            tags=[RunTag(k, v) for k, v in tags.items()],
            metrics=[Metric(k, float(v), 0, step) for k, v in values.items()],
        )
        if run.info.status == "RUNNING":  # a trial ended from outside (pruned, killed) may leave it open
            client.set_terminated(run.info.run_id, status=_STATUS.get(state, "KILLED"))

    def _mlflow_end(self, trials: list[Any], results: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        run_id, best = self.mlflow["parent_run_id"], results.get("best")
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        tags = {"tunepilot.stopped": str(results.get("stopped") or "")}
        metrics = {f"sweep/{k}_trials": v for k, v in counts.items()}
        if best:
            tags["tunepilot.best_trial"] = str(best["number"])
            metrics["sweep/best_value"] = best["value"]
        self.client.log_batch(
            run_id,
            tags=[RunTag(k, v) for k, v in tags.items()],
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        )
        for name in ("leaderboard.json", "best.json", "best.yaml", "decisions.json", "report.html"):
            if (self.sweep_dir / name).is_file():
                self.client.log_artifact(run_id, str(self.sweep_dir / name))
        self.client.set_terminated(run_id, status="FINISHED")

    def _tensorboard_trial(self, trial: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        hparams = {k: v for k, v in trial.params.items() if isinstance(v, (int, float, str, bool))}
        hparams["state"] = trial.state.name.lower()
        metrics = {"hparam/value": trial.value if trial.value is not None else float("nan")}
        for key in ("seconds", "tokens"):
            if isinstance(trial.user_attrs.get(key), (int, float)):
                metrics[f"hparam/{key}"] = float(trial.user_attrs[key])
        with SummaryWriter(log_dir=str(self.sweep_dir / "tensorboard" / "hparams")) as writer:
            writer.add_hparams(hparams, metrics, run_name=f"trial-{trial.number:04d}")

    def _wandb_end(self, trials: list[Any], results: dict[str, Any]) -> None:
        import wandb

        group = self._read_state().get("wandb", {}).get("group")
        s = self.settings
        run = wandb.init(
            mode=s.wandb_mode or os.environ.get("WANDB_MODE") or "offline",
            project=s.wandb_project or os.environ.get("WANDB_PROJECT") or "tunepilot",
            entity=s.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
            group=group,
            job_type="sweep",
            name=self.name,
            dir=str(self.sweep_dir),
            config=self.params,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, disable_git=True, x_disable_stats=True),
        )
        columns = ["trial", "state", "value", "reason", *_COSTS, "params"]
        rows = [
            [
                t.number,
                t.state.name.lower(),
                t.value,
                t.user_attrs.get("reason"),
                *[t.user_attrs.get(k) for k in _COSTS],
                json.dumps(t.params),
            ]
            for t in trials
        ]
        run.log({"trials": wandb.Table(columns=columns, data=rows)})
        best = results.get("best")
        if best:
            run.summary.update({"best_trial": best["number"], "best_value": best["value"]})
        run.finish()


class _NoTracker:
    def on_trial_end(self, trial: Any, best: int | None = None) -> None:
        return None

    def on_sweep_end(self, study: Any, results: dict[str, Any]) -> None:
        return None


def sweep_tracker(spec: Any, base: Any, sweep_dir: str | Path, name: str | None = None, warn=None):
    """The sweep's tracker from the base config's `tracking` section; a no-op without `report_to`."""
    if base is None or not base.tracking.report_to:
        return _NoTracker()
    sweep_dir = Path(sweep_dir)
    params = config_params(base)
    for key in ("space", "objective", "sampler", "pruner", "protocol", "budget", "engine"):
        value = getattr(spec, key, None)
        if value is not None:
            params[f"sweep.{key}"] = json.dumps(
                value.model_dump(mode="json")
                if hasattr(value, "model_dump")
                else {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in value.items()},
                default=str,
            )[:500]
    return SweepTracker(base.tracking, sweep_dir, name or sweep_dir.name, redact_params(params), warn)
