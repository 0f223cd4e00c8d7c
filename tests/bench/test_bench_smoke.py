"""The GPU benchmarks' scripts, run on CPU with tiny shapes (`--smoke`): they must keep working, and the
makespan script's checks that both sides do the same work must hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--workdir", str(tmp_path / "w"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_makespan_smoke_trains_the_same_tokens_and_losses_on_both_sides(tmp_path):
    result = _run("packed_sweep.py", tmp_path)
    (packed,) = result["packed"]
    assert packed["engine"] == "tunepilot sweep (packed)"
    assert packed["complete"] == packed["trials"] == 3
    assert packed["trained_tokens"] == 3 * 2 * 2 * 31  # trials x steps x micro-batch x (seq - 1)
    gap = packed["eval_gap"]
    assert gap["shared_trials"] == 3  # the same seeded draws on both sides
    assert gap["max_relative_gap"] < 1e-4  # fp32 on CPU: the same trial, the same eval loss
    assert result["baseline"]["seconds"] > 0 and packed["ratio"] > 0


def test_throughput_smoke_reports_each_point_against_the_baseline(tmp_path):
    result = _run("packed_throughput.py", tmp_path)
    rows = {(r["engine"], r["k"]): r for r in result["results"]}
    assert set(rows) == {("trainer+peft", 1), ("packed", 1), ("packed", 2)}
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
