"""PNG of a run's curves with the findings marked: train loss (raw and smoothed), eval loss, and the
learning rate and grad norm below when the log has them. Matplotlib's object API with the Agg canvas:
no global pyplot state, no display needed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tunepilot.health.diagnose import Diagnosis, view_of
from tunepilot.health.findings import SEVERITY_RANK
from tunepilot.health.series import finite
from tunepilot.health.settings import HealthSettings
from tunepilot.logs import RunLog

_COLOURS = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}


def plot_run(log: RunLog, diagnosis: Diagnosis, path: str | Path, settings: HealthSettings | None = None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    view = view_of(log, settings or HealthSettings())
    lower = [r for r in view.train if finite(r.lr) or finite(r.grad_norm)]
    fig = Figure(figsize=(10, 7 if lower else 5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if lower else [fig.subplots()]
    ax = axes[0]
    if view.n:
        ax.plot(view.steps, view.losses, color="#90a4ae", lw=0.8, label="train loss")
        ax.plot(view.steps, view.trend, color="#263238", lw=1.6, label=f"train (median of {view.window})")
    if view.eval_losses:
        ax.plot(view.eval_steps, view.eval_losses, "o-", color="#2e7d32", ms=4, label="eval loss")
    _mark_findings(ax, diagnosis)
    ax.set_ylabel("loss")
    ax.set_title(f"{Path(log.path).name}: {diagnosis.verdict}", loc="left")
    if ax.get_legend_handles_labels()[0]:  # a log without any loss has nothing to label
        ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if lower:
        _plot_lower(axes[1], lower)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return _save(fig, Path(path))


def _mark_findings(ax, diagnosis: Diagnosis) -> None:
    shown = set()
    for finding in diagnosis.findings:
        if finding.severity == "info" or not finding.steps:
            continue
        colour = _COLOURS[finding.severity]
        for step in finding.steps[:30]:
            ax.axvline(step, color=colour, alpha=0.35, lw=1, ls="--")
        label = f"{finding.code} ({finding.severity})"
        if label not in shown:
            shown.add(label)
            ax.annotate(
                label,
                xy=(finding.steps[0], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 11 * (len(shown) - 1)),
                textcoords="offset points",
                fontsize=8,
                color=colour,
                weight="bold" if SEVERITY_RANK[finding.severity] == 2 else "normal",
            )


def _plot_lower(ax, train) -> None:
    lr = [(r.step, r.lr) for r in train if finite(r.lr)]
    if lr:
        ax.plot(*zip(*lr, strict=True), color="#6a1b9a", lw=1, label="learning rate")
        ax.set_ylabel("lr")
    grad = [(r.step, r.grad_norm) for r in train if finite(r.grad_norm)]
    if grad:
        twin = ax.twinx() if lr else ax
        twin.plot(*zip(*grad, strict=True), color="#00838f", lw=0.8, label="grad norm")
        twin.set_ylabel("grad norm")
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> Path:
    """Write the PNG atomically (temporary sibling, then rename)."""
    from tunepilot.errors import UserError
    from tunepilot.io import ensure_dir, write_error

    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the path of a PNG file to write (--plot)")
    ensure_dir(path.parent, "directory for --plot")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
        os.close(fd)
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except OSError as e:
        user = write_error(path, e)
        if user is None:
            raise
        raise user from e
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return path
