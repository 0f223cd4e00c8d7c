"""A rich progress bar fed by the metrics stream (stderr, so --json output stays clean)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunepilot.cli.output import stderr_console
from tunepilot.stream import EvalPoint, Event, Record, TrainStep


class TrainProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._train = ""
        self._eval = ""

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                      console=stderr_console(), transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def start(self, plan) -> None:
        if self._progress:
            self._progress.console.print(f"plan: {plan.describe()}")
            self._task = self._progress.add_task("train", total=plan.total_steps, status="")

    def on_record(self, record: Record) -> None:
        if self._progress is None or self._task is None:
            return
        if isinstance(record, TrainStep):
            self._train = f"loss {record.loss:.4f} lr {record.lr:.2e}"
            self._progress.update(self._task, completed=record.step, status=self._train + self._eval)
        elif isinstance(record, EvalPoint) and record.eval_loss is not None:
            self._eval = f" eval {record.eval_loss:.4f}"
            self._progress.update(self._task, status=self._train + self._eval)
        elif isinstance(record, Event) and record.severity != "info":
            self._progress.console.print(f"[yellow]{record.severity}[/] step {record.step}: {record.message}")
