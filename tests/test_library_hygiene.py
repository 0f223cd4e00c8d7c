"""Library code leaves global logging and warning state alone; only the CLI sets it."""

from __future__ import annotations

import subprocess
import sys


def test_running_a_sweep_as_a_library_changes_no_global_logging_or_warning_state(tmp_path):
    script = f"""
import logging, warnings, yaml, json
from pathlib import Path
curves = Path({str(tmp_path)!r}) / "c.jsonl"
curves.write_text("\\n".join(json.dumps({{"learning_rate": lr, "total_model_steps": 100,
    "learning_curves": {{"acc": [[50, 0.5], [100, 0.5 + lr * 1000]]}}}}) for lr in (1e-5, 1e-4, 1e-3)))
spec = Path({str(tmp_path)!r}) / "s.yaml"
spec.write_text(yaml.safe_dump({{"space": {{"learning_rate": {{"low": 1e-5, "high": 1e-3, "log": True}}}},
    "budget": {{"n_trials": 2}}, "engine": {{"name": "replay", "curves": str(curves)}}}}))
import optuna
before = (list(warnings.filters), optuna.logging.get_verbosity(), logging.getLogger().level)
from tunepilot.search.sweep import prepare, run_sweep
run_sweep(prepare(spec, Path({str(tmp_path)!r}) / "sw"))
after = (list(warnings.filters), optuna.logging.get_verbosity(), logging.getLogger().level)
print("SAME" if before == after else f"CHANGED {{before}} -> {{after}}")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "SAME", out.stdout[-2000:]
