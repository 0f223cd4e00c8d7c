"""Training progress fed by the metrics stream, on stderr (so --json output stays clean).

In a terminal: a rich progress bar. Anywhere else (a file, a pipe, a scheduler's log): one plain
line every `logging_steps` optimizer steps and at the last step, the HF Trainer convention, plus a
line per evaluation and per warning. Throughput is shown for all processed tokens (prompts
included, when the engine reports them) next to the trained (label) tokens that count in the loss.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunepilot.cli.output import stderr_console
from tunepilot.stream import EvalPoint, Event, Record, TrainStep


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s}s" if s < 60 else (f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m")


class Throughput:
    """Tokens per second between two TrainStep records (a window, so resumes and evals blur less)."""

    def __init__(self) -> None:
        self._last: TrainStep | None = None

    def update(self, r: TrainStep) -> str:
        last, self._last = self._last, r
        if last is None or r.seconds is None or last.seconds is None or r.seconds <= last.seconds:
            return ""
        dt = r.seconds - last.seconds
        trained = (r.tokens or 0) - (last.tokens or 0)
        if r.input_tokens is not None and last.input_tokens is not None:
            return f"{(r.input_tokens - last.input_tokens) / dt:.0f} tok/s ({trained / dt:.0f} trained tok/s)"
        return f"{trained / dt:.0f} trained tok/s"


class TrainProgress:
    def __init__(self, enabled: bool = True, logging_steps: int = 1, console: Console | None = None):
        self.enabled = enabled
        self.logging_steps = max(1, logging_steps)
        self.console = console or stderr_console()
        self.plain = not self.console.is_terminal  # a file or a pipe: log lines, no bar
        self._progress: Progress | None = None
        self._task = None
        self._total = 0
        self._train = ""
        self._eval = ""
        self._bar_rate = Throughput()
        self._line_rate = Throughput()

    def __enter__(self) -> TrainProgress:
        if self.enabled and not self.plain:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def start(self, plan) -> None:
        if not self.enabled:
            return
        self._total = plan.total_steps
        self.console.print(f"plan: {plan.describe()}", markup=False)
        if self._progress:
            self._task = self._progress.add_task("train", total=plan.total_steps, status="")

    def on_record(self, record: Record) -> None:
        if not self.enabled:
            return
        if self.plain:
            self._plain(record)
            return
        if self._progress is None or self._task is None:
            return
        if isinstance(record, TrainStep):
            rate = self._bar_rate.update(record)
            self._train = f"loss {record.loss:.4f} lr {record.lr:.2e}" + (f" {rate}" if rate else "")
            self._progress.update(self._task, completed=record.step, status=self._train + self._eval)
        elif isinstance(record, EvalPoint) and record.eval_loss is not None:
            self._eval = f" eval {record.eval_loss:.4f}"
            self._progress.update(self._task, status=self._train + self._eval)
        elif isinstance(record, Event) and record.severity != "info":
            self._progress.console.print(f"[yellow]{record.severity}[/] step {record.step}: {escape(record.message)}")

    def _plain(self, record: Record) -> None:
        if isinstance(record, TrainStep):
            if record.step % self.logging_steps and record.step != self._total:
                return
            self.console.print(self.step_line(record), markup=False, highlight=False, soft_wrap=True)
        elif isinstance(record, EvalPoint):
            metrics = "".join(f" {k} {v:.4g}" for k, v in record.metrics.items())
            loss = f" eval_loss {record.eval_loss:.4f}" if record.eval_loss is not None else ""
            self.console.print(
                f"eval step {record.step}:{loss}{metrics}", markup=False, highlight=False, soft_wrap=True
            )
        elif isinstance(record, Event) and record.severity != "info":
            self.console.print(
                f"{record.severity} step {record.step}: {record.message}", markup=False, soft_wrap=True, highlight=False
            )

    def step_line(self, r: TrainStep) -> str:
        total = self._total or r.step
        parts = [f"step {r.step}/{total} ({r.step / max(total, 1):.0%})"]
        if r.loss is not None:
            parts.append(f"loss {r.loss:.4f}")
        if r.lr is not None:
            parts.append(f"lr {r.lr:.2e}")
        if r.grad_norm is not None:
            parts.append(f"grad_norm {r.grad_norm:.3g}")
        rate = self._line_rate.update(r)
        if rate:
            parts.append(rate)
        if r.seconds is not None:
            eta = r.seconds / max(r.step, 1) * (total - r.step)
            parts.append(f"{_fmt_s(r.seconds)} elapsed, ETA {_fmt_s(eta)}")
        return " | ".join(parts)
