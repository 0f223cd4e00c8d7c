"""The staged protocol's instability check reads tunepilot.health's stability rules off a trial's stream."""

from __future__ import annotations

import math

from tunepilot.search.health_check import early_instability
from tunepilot.stream import MetricsWriter, TrainStep


def write_stream(run_dir, losses):
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    for step, loss in enumerate(losses, 1):
        writer.write(TrainStep(step=step, loss=loss, lr=1e-4, grad_norm=1.0))
    writer.close()
    return run_dir


def test_a_smooth_early_curve_has_no_findings(tmp_path):
    smooth = [2.0 * math.exp(-i / 30) + 0.5 for i in range(40)]
    assert early_instability(write_stream(tmp_path, smooth)) == []


def test_spikes_in_the_early_curve_are_found(tmp_path):
    spiky = [2.0 * math.exp(-i / 30) + 0.5 + (6.0 if i % 5 == 4 else 0.0) for i in range(40)]
    assert "loss_spikes" in early_instability(write_stream(tmp_path, spiky))


def test_no_stream_no_findings(tmp_path):
    assert early_instability(tmp_path) == [] and early_instability(None) == []
