"""Is a trial's early training unstable? tunepilot.health's stability rules over its metrics stream.

The staged protocol adds warmup only when the winner's early curve is unstable. A trial judged at
20% of its steps was stopped there, so its stream (`<run dir>/metrics.jsonl`, written by training
engines) covers exactly the early part; the rules that judge stability (loss spikes, oscillation,
grad-norm alerts, divergence) run on it as `diagnose` would. Engines without a stream (replay)
give no findings, and the protocol falls back to its eval-curve criterion alone.
"""

from __future__ import annotations

from pathlib import Path

STABILITY_RULES = {"loss_spikes", "oscillation", "grad_norm", "divergence"}


def early_instability(run_dir: str | Path | None) -> list[str]:
    """Codes of the stability findings (warning or error) on the trial's metrics stream."""
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    import tunepilot.health.rules  # noqa: F401  (importing the rules registers them)
    from tunepilot.health import HealthSettings, RunView, run_rules
    from tunepilot.stream import read_stream

    view = RunView.build(read_stream(path), HealthSettings())
    findings = run_rules(view, only=STABILITY_RULES)
    return sorted({f.code for f in findings if f.severity in ("warning", "error")})
