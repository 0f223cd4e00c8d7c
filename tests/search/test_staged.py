"""The staged protocol's decisions on curves whose answer is known (tests/search/conftest.py)."""

from __future__ import annotations

import math

import pytest

from tunepilot.search.sweep import prepare, run_sweep


def staged(tmp_path, make_sweep, curves, ranks, **protocol):
    path = make_sweep(
        curves,
        space={
            "learning_rate": {"low": 1e-6, "high": 1e-2, "log": True},
            "lora_rank": ranks,
            "warmup_ratio": {"low": 0.0, "high": 0.2},
        },
        protocol={"name": "staged", "judge_at": 0.3, **protocol},
        budget={"n_trials": 20},
    )
    return run_sweep(prepare(path, tmp_path / "sweep"))


def by_stage(result):
    return {d["stage"]: d for d in result["decisions"]}


def test_staged_walks_lr_rank_warmup_then_one_full_run(tmp_path, grid_curves, make_sweep):
    result = staged(tmp_path, make_sweep, grid_curves, [4, 8, 16, 32])
    d = by_stage(result)
    assert math.isclose(d["lr"]["choice"], 1e-4)  # 1e-4 is the centre of 1e-6..1e-2 and the best LR
    assert d["rank"]["choice"] == 8  # rank 8 is 4% better than 4 at 30%: above the 2% bar
    assert d["warmup"]["choice"] == pytest.approx(0.1)  # 1e-4 without warmup dips at 20%: unstable
    assert "unstable" in d["warmup"]["reason"]
    stages = [row["stage"] for row in sorted(result["leaderboard"], key=lambda r: r["number"])]
    assert stages == ["lr", "lr", "lr", "rank", "warmup", "final"]
    final = [r for r in result["leaderboard"] if r["stage"] == "final"]
    assert final[0]["state"] == "complete" and final[0]["reached_pct"] == 100
    assert final[0]["params"] == pytest.approx({"learning_rate": 1e-4, "lora_rank": 8, "warmup_ratio": 0.1})
    judged = [r for r in result["leaderboard"] if r["stage"] != "final"]
    assert all(r["state"] == "pruned" and r["reached_pct"] <= 30 for r in judged)


def test_staged_keeps_the_smaller_rank_below_the_gain_threshold(tmp_path, grid_curves, make_sweep):
    result = staged(tmp_path, make_sweep, grid_curves, [8, 16, 32])
    d = by_stage(result)
    assert d["rank"]["choice"] == 8  # 16 is only 0.5% better
    assert "not kept" in d["rank"]["reason"]


def test_staged_adds_no_warmup_when_the_early_curve_is_stable(tmp_path, grid_curves, make_sweep):
    # candidates below 1e-4 never dip in the synthetic file
    result = staged(tmp_path, make_sweep, grid_curves, [8, 16], learning_rates=[3e-6, 1e-5, 3e-5])
    d = by_stage(result)
    assert math.isclose(d["lr"]["choice"], 3e-5)
    assert "stable" in d["warmup"]["reason"] and d["warmup"]["choice"] == 0.0
    assert [r["stage"] for r in result["leaderboard"]].count("warmup") == 0
