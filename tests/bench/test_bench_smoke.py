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


def test_concurrent_smoke_times_every_process_and_the_whole_search(tmp_path):
    result = _run("concurrent_trainer.py", tmp_path)
    points = {p["k"]: p for p in result["throughput"]}
    assert set(points) == {1, 2}
    for k, p in points.items():
        assert p["state"] == "complete"
        assert [s["state"] for s in p["processes"]] == ["complete"] * k
        assert p["window_s"] > 0 and p["window_tokens"] > 0 and p["tokens_per_s"] > 0 and p["mfu"] > 0
        # the window lies inside every process's timed steps: at most their 30 steps x micro 2 x (seq 32 - 1)
        assert p["window_tokens"] <= k * 30 * 2 * 31 + 1e-6
        assert len(p["per_process_tokens_per_s"]) == k and min(p["per_process_tokens_per_s"]) > 0
    (sweep,) = result["makespan"]
    assert [s["state"] for s in sweep["processes"]] == ["complete"] * 2
    assert sweep["trials"] == sweep["complete"] == 4  # the file lock: no worker asks past the budget
    assert sorted(v["number"] for v in sweep["values"]) == [0, 1, 2, 3]
    assert all(v["worker"] in (0, 1) and v["value"] > 0 for v in sweep["values"])
    # each worker's sampler has its own seed: none proposes another's start-up draws
    assert len({json.dumps(v["params"], sort_keys=True) for v in sweep["values"]}) == 4
    assert 0 < sweep["seconds"] <= sweep["wall_s"]
