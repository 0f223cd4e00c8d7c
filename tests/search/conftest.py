"""Synthetic learning-curve files (the replay format) whose best configuration is known by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml


def curve(final: float, total: int, every: int, start: float = 0.3, dip_at: int | None = None) -> list:
    """A saturating accuracy curve to `final`; `dip_at` drops it by 30% once (an unstable early curve)."""
    points, step = [], every
    while True:
        step = min(step, total)
        value = final - (final - start) * math.exp(-5 * step / total)
        if dip_at is not None and step == dip_at:
            value *= 0.7
        points.append([step, value])
        if step == total:
            return points
        step += every


def quality(lr: float, rank: int = 8, warmup: float = 0.0) -> float:
    """Best at lr=1e-4; rank 8 is 4% better than rank 4, rank 16 only 0.5% better than 8; warmup +0.2%."""
    q = 0.85 - 0.05 * (math.log10(lr) + 4) ** 2
    q *= (1.04 if rank >= 8 else 1.0) * (1.005 if rank >= 16 else 1.0)
    return q + 0.02 * warmup


def write_runs(path: Path, runs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    return path


@pytest.fixture
def curves_file(tmp_path):
    """Write runs (dicts in the replay format) to a JSONL file named `name` in tmp_path."""
    return lambda name, runs: write_runs(tmp_path / name, runs)


@pytest.fixture
def grid_curves(tmp_path) -> Path:
    """lr x rank x warmup, 10 points each; low LRs run 2x the steps; high LRs dip early without warmup."""
    runs = []
    for lr in [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]:
        for rank in (4, 8, 16, 32):
            for warmup in (0.0, 0.1):
                total = 20000 if lr < 1e-5 else 10000
                dip = 2000 if lr >= 1e-4 and warmup == 0 else None
                runs.append(
                    {
                        "learning_rate": lr,
                        "lora_rank": rank,
                        "warmup_steps": int(warmup * total),
                        "total_model_steps": total,
                        "learning_curves": {"val": curve(quality(lr, rank, warmup), total, 1000, dip_at=dip)},
                    }
                )
    return write_runs(tmp_path / "grid.jsonl", runs)


@pytest.fixture
def make_sweep(tmp_path):
    """Write a replay sweep file over `curves` with top-level keys replaced by `overrides`."""
    return lambda curves, **overrides: sweep_file(tmp_path, curves, **overrides)


def sweep_file(tmp_path: Path, curves: Path, **overrides) -> Path:
    spec = {
        "space": {"learning_rate": {"low": 1e-6, "high": 1e-2, "log": True}, "lora_rank": [4, 8, 16, 32]},
        "objective": {"metric": "val", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": 6},
        "engine": {"name": "replay", "curves": str(curves)},
        "skip_duplicates": False,  # mechanics tests count real runs; test_loop tests the reuse
    }
    spec.update(overrides)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL 15 server for this test session (tests/postgres.py); skips without PostgreSQL."""
    from postgres import postgres_server as start

    with start() as url:
        yield url


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    from postgres import fresh_database

    return fresh_database(postgres_server)
