"""The "can it still win?" pruner: the optimistic final from the study's own curves against the incumbent."""

from __future__ import annotations

import math

import optuna
import pytest

from tunepilot.search.gain import GainPruner, plateau_noise
from tunepilot.search.pruners import EnvelopePruner
from tunepilot.search.spec import parse_sweep
from tunepilot.search.study import make_pruner


def _study(direction: str, pruner: GainPruner, complete: list[tuple[dict[int, float], float]]) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner)
    for values, final in complete:
        trial = study.ask()
        for step, v in values.items():
            trial.report(v, step)
        study.tell(trial, final)
    return study


def _no_fallback(**kw) -> GainPruner:
    # a fallback that never prunes: these tests judge the gain rule alone
    return GainPruner(fallback=optuna.pruners.NopPruner(), z=0.0, **kw)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stops_a_trial_that_cannot_reach_the_incumbent_even_with_the_largest_gain_seen(sign):
    direction = "maximize" if sign > 0 else "minimize"
    # complete trials gained at most 0.05 from 40% to the end; the incumbent ended at 0.90
    complete = [({40: sign * 0.85}, sign * 0.90), ({40: sign * 0.80}, sign * 0.82), ({40: sign * 0.70}, sign * 0.74)]
    study = _study(direction, _no_fallback(slack=1.0, n_min_complete=3), complete)
    hopeless, close = study.ask(), study.ask()
    hopeless.report(sign * 0.84, 40)  # 0.84 + 0.05 < 0.90
    close.report(sign * 0.86, 40)  # 0.86 + 0.05 > 0.90
    assert hopeless.should_prune() and not close.should_prune()


def test_slack_and_noise_widen_the_optimistic_final():
    complete = [({40: 0.85}, 0.90), ({40: 0.80}, 0.82), ({40: 0.70}, 0.74)]
    strict = _study("maximize", _no_fallback(slack=1.0, n_min_complete=3), complete)
    wide = _study("maximize", _no_fallback(slack=1.5, n_min_complete=3), complete)
    t1, t2 = strict.ask(), wide.ask()
    t1.report(0.84, 40)
    t2.report(0.84, 40)  # 0.84 + 1.5 x 0.05 > 0.90
    assert t1.should_prune() and not t2.should_prune()


def test_no_gain_judgement_before_enough_complete_trials():
    study = _study("maximize", _no_fallback(n_min_complete=3), [({40: 0.85}, 0.90), ({40: 0.80}, 0.82)])
    trial = study.ask()
    trial.report(0.10, 40)
    assert not trial.should_prune()  # two complete trials say nothing yet about what can be gained


def test_the_fallback_still_prunes_clearly_bad_curves_early():
    pruner = GainPruner(fallback=EnvelopePruner(margin=0.05, warmup=0.05, n_startup_trials=1))
    study = _study("maximize", pruner, [({10: 0.80}, 0.90)])
    trial = study.ask()
    trial.report(0.50, 10)
    assert trial.should_prune()


def test_plateau_noise_reads_the_jitter_around_a_line():
    study = optuna.create_study(direction="maximize")
    for offset in (0.0, 0.1):
        trial = study.ask()
        for i, step in enumerate(range(50, 101, 5)):
            trial.report(offset + 0.001 * step + (0.002 if i % 2 else -0.002), step)
        study.tell(trial, 0.9)
    noise = plateau_noise(study.get_trials(deepcopy=False))
    # residuals of an alternating +-0.002 around a line are about 0.002; the noise of a difference is sqrt(2) x that
    assert noise == pytest.approx(math.sqrt(2) * 0.002, rel=0.15)
    assert plateau_noise([]) == 0.0


def test_sweep_file_selects_it_with_envelope_options():
    spec = parse_sweep(
        {
            "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
            "pruner": {"name": "gain", "slack": 2.0, "envelope": {"margin": 0.06}},
            "engine": {"name": "replay", "curves": "x.jsonl"},
        },
        "test",
    )
    pruner = make_pruner(spec)
    assert isinstance(pruner, GainPruner) and pruner.slack == 2.0 and pruner.fallback.margin == 0.06


def test_a_collapsed_curve_stops_with_nothing_to_compare_against():
    study = optuna.create_study(direction="maximize", pruner=_no_fallback(collapse=0.25))
    diverged, noisy = study.ask(), study.ask()
    for step, v in ((10, 0.72), (20, 0.35)):  # fell by half: diverged
        diverged.report(v, step)
    for step, v in ((10, 0.72), (20, 0.66)):  # a dip of 8%: noise or a spike, not a collapse
        noisy.report(v, step)
    assert diverged.should_prune() and not noisy.should_prune()


def test_from_top_counts_only_the_gains_of_the_best_complete_trials():
    # a slow learner gained 0.30 from 40% but ended last; the best two gained at most 0.05
    complete = [({40: 0.85}, 0.90), ({40: 0.82}, 0.86), ({40: 0.40}, 0.70)]
    every = _study("maximize", _no_fallback(slack=1.0, n_min_complete=2), complete)
    top = _study("maximize", _no_fallback(slack=1.0, n_min_complete=2, from_top=0.5), complete)
    t1, t2 = every.ask(), top.ask()
    t1.report(0.80, 40)
    t2.report(0.80, 40)
    assert not t1.should_prune() and t2.should_prune()


def test_a_replay_sweep_with_the_gain_pruner_stops_hopeless_trials_and_keeps_the_best(
    tmp_path, grid_curves, make_sweep
):
    from tunepilot.search.sweep import prepare, run_sweep

    path = make_sweep(grid_curves, pruner="gain", budget={"n_trials": 16})
    result = run_sweep(prepare(path, tmp_path / "sweep"))
    rows = result["leaderboard"]
    complete = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert complete and pruned and all(r["reached_pct"] < 100 for r in pruned)
    # nothing pruned ended better than the best complete trial would have (the curves are noise-free)
    from tunepilot.engines.replay import CurveTable

    table = CurveTable(grid_curves)
    best = max(r["value"] for r in complete)
    assert all(table.nearest(r["params"]).final <= best + 1e-9 for r in pruned)
