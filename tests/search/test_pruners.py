"""The best-curve (envelope) pruner and the rank_early protocol."""

from __future__ import annotations

import optuna
import pytest

from tunepilot.search.pruners import EnvelopePruner
from tunepilot.search.sweep import prepare, run_sweep


def study_with(curves: list[dict[int, float]], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=EnvelopePruner(margin=0.1, warmup=0.1))
    for values in curves:
        trial = study.ask()
        for step, v in values.items():
            trial.report(v, step)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


@pytest.mark.parametrize("direction,good,bad", [("maximize", 0.8, 0.6), ("minimize", 1.0, 1.3)])
def test_envelope_prunes_what_is_clearly_under_the_best_curve_at_the_same_fraction(direction, good, bad):
    study = study_with([{20: good}, {20: good * 0.99}], direction)
    close, far, early = study.ask(), study.ask(), study.ask()
    close.report(good * (0.95 if direction == "maximize" else 1.05), 20)  # inside 10% x (1 - 0.2) = 8%
    far.report(bad, 20)
    early.report(bad, 5)  # before the warmup: never judged
    assert not close.should_prune() and far.should_prune() and not early.should_prune()


def test_envelope_waits_for_enough_trials_at_that_fraction():
    study = study_with([{30: 0.9}])
    trial = study.ask()
    trial.report(0.1, 20)  # nobody else reported at 20%
    assert not trial.should_prune()


def test_rank_early_trains_only_bracket_winners_to_the_end(tmp_path, grid_curves, make_sweep):
    path = make_sweep(
        grid_curves, protocol={"name": "rank_early", "n": 6, "eta": 3, "rungs": [0.2, 1.0]}, budget={"n_trials": 14}
    )
    result = run_sweep(prepare(path, tmp_path / "sweep"))
    rows = sorted(result["leaderboard"], key=lambda r: r["number"])
    first = rows[:6]
    assert all(r["stage"] == "b0r0" and r["state"] == "pruned" and r["reached_pct"] <= 30 for r in first)
    finals = [r for r in rows if r["stage"] == "b0r1"]
    assert len(finals) == 2 and all(r["state"] == "complete" for r in finals)
    # the two promoted were the best two of the bracket at 20%
    from tunepilot.engines.replay import CurveTable

    table = CurveTable(grid_curves)
    at20 = sorted((table.nearest(r["params"]).points[1][1], r["number"]) for r in first)
    promoted = {tuple(sorted(r["params"].items())) for r in finals}
    assert promoted == {tuple(sorted(rows[n]["params"].items())) for _, n in at20[-2:]}
    assert any(d["stage"] == "bracket 0 final" for d in result["decisions"])
