"""Files a tracker attaches to a finished run: the curves PNG (with the health verdict), made once per
run directory and shared by every tracker of that run."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

_made: dict[tuple, Path] = {}  # (run dir, stream size and mtime) -> PNG
_lock = threading.Lock()


def curves_png(run_dir: Path) -> Path | None:
    """`curves.png` of the run's metrics.jsonl in a temporary directory; None when there is no stream."""
    run_dir = Path(run_dir).resolve()
    stream = run_dir / "metrics.jsonl"
    if not stream.is_file():
        return None
    stat = stream.stat()
    key = (run_dir, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key not in _made or not _made[key].exists():
            _made[key] = _plot(run_dir)
        return _made[key]


def _plot(run_dir: Path) -> Path:
    from tunepilot.health.diagnose import diagnose
    from tunepilot.health.plot import plot_run
    from tunepilot.logs import read_log

    log = read_log(run_dir)
    out = Path(tempfile.mkdtemp(prefix="tunepilot-curves-")) / "curves.png"
    return plot_run(log, diagnose(log), out)
