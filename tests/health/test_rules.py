"""Every rule fires on a stream that shows its problem and stays silent on healthy ones."""

from __future__ import annotations

import math

import pytest
from streams import FIXTURES, as_log, eval_curve, healthy, healthy_eval, healthy_train, train_curve

from tunepilot.health.diagnose import diagnose, view_of
from tunepilot.health.registry import RULES
from tunepilot.health.rules.learning_rate import lr_range
from tunepilot.health.settings import HealthSettings
from tunepilot.logs import read_log
from tunepilot.stream import EvalPoint, TrainStep

SETTINGS = HealthSettings()


def run_rule(code: str, records, **meta):
    return RULES[code].fn(view_of(as_log(records, **meta), SETTINGS))


def problems(findings):
    return [f for f in findings if f.severity != "info"]


HEALTHY_REAL = [
    "hf_distilbert_imdb_lora",
    "hf_qvikhr_lora_noeval",
    "hf_qwen05_full_verifier",
    "hf_falcon_lora_imdb_slow",
    "hf_lora_fast_plateau",
    "hf_law_lora_sparse_logging",
]


@pytest.mark.parametrize("code", sorted(RULES))
def test_every_rule_is_silent_on_a_healthy_stream(code):
    assert run_rule(code, healthy(), method="lora", learning_rate=1e-4) == []


@pytest.mark.parametrize("code", sorted(RULES))
@pytest.mark.parametrize("name", HEALTHY_REAL)
def test_every_rule_raises_no_problem_on_real_healthy_logs(code, name):
    log = read_log(FIXTURES / name)
    assert problems(RULES[code].fn(view_of(log, SETTINGS))) == []


def test_nan_loss_is_an_error_that_stops_the_run():
    records = train_curve(healthy_train)
    records[49].loss = math.nan
    [finding] = run_rule("nan_inf", records)
    assert (finding.severity, finding.verdict, finding.stop) == ("error", "diverged", True)
    assert finding.evidence["first_step"] == 50 and finding.evidence["last_finite_step"] == 49
    assert any(c.key == "learning_rate" and c.factor < 1 for c in finding.changes)


def test_nan_eval_loss_counts_too():
    records = [*train_curve(healthy_train), EvalPoint(step=100, eval_loss=math.inf)]
    assert run_rule("nan_inf", records)[0].evidence["first_step"] == 100


def test_rare_nan_grad_norm_with_finite_loss_is_only_a_warning():
    records = train_curve(healthy_train)
    for i in (3, 4, 60):  # fp16 loss-scale skips
        records[i].grad_norm = math.inf
    [finding] = run_rule("nan_inf", records)
    assert finding.code == "nan_grad_norm" and finding.verdict is None and not finding.stop


def test_nan_grad_norm_that_never_stops_is_divergence():
    records = train_curve(healthy_train)
    for r in records[-3:]:
        r.grad_norm = math.nan
    [finding] = run_rule("nan_inf", records)
    assert finding.code == "nan_inf" and finding.evidence["first_step"] == 198


def test_sudden_collapse_to_zero_is_an_error():
    records = train_curve(healthy_train)
    for r in records[120:]:
        r.loss = 0.0
    [finding] = run_rule("zero_collapse", records)
    assert finding.code == "zero_collapse" and finding.evidence["step"] == 121 and finding.stop
    assert finding.verdict == "diverged"


def test_slow_slide_to_zero_is_memorisation_not_collapse():
    records = train_curve(lambda s: max(0.0, 0.5 - s / 150), noise=0.0)
    [finding] = run_rule("zero_collapse", records)
    assert finding.code == "zero_loss" and finding.verdict is None and not finding.stop


def test_sustained_rise_is_divergence_with_where_and_how_much():
    records = train_curve(lambda s: healthy_train(s) if s <= 120 else healthy_train(120) * 1.05 ** (s - 120))
    [finding] = run_rule("divergence", records)
    assert finding.severity == "error" and finding.stop and finding.verdict == "diverged"
    assert 110 <= finding.evidence["min_step"] <= 130
    assert finding.evidence["ratio_to_min"] >= SETTINGS.divergence_factor


def test_loss_ending_above_its_start_is_divergence():
    records = train_curve(lambda s: 2.0 - s / 100 if s <= 60 else 1.4 + (s - 60) / 40, n=160)
    [finding] = run_rule("divergence", records)
    assert finding.code == "divergence" and finding.verdict == "diverged"


def test_a_runaway_that_recovers_is_unstable_not_diverged():
    def bump(s):
        return healthy_train(s) * (4.0 if 100 <= s < 115 else 1.0)

    [finding] = run_rule("divergence", train_curve(bump))
    assert finding.code == "divergence_recovered" and finding.verdict == "unstable" and not finding.stop


def test_one_spike_warns_many_spikes_are_unstable():
    one = train_curve(healthy_train)
    one[150].loss *= 5
    [finding] = run_rule("loss_spikes", one)
    assert finding.steps == [151] and finding.verdict is None
    many = train_curve(healthy_train)
    for i in (60, 90, 120, 150, 180, 190):
        many[i].loss *= 5
    [finding] = run_rule("loss_spikes", many)
    assert finding.evidence["count"] == 6 and finding.verdict == "unstable"


def test_rounding_at_tiny_losses_and_small_grad_norms_are_not_spikes():
    records = train_curve(lambda s: 0.0001, noise=0.0)
    for r in records[::7]:
        r.loss = 0.0003  # a loss logged to 4 decimals: 3x, but nothing happened
    for r in records[::9]:
        r.grad_norm = 0.5  # 5x the usual 0.1 here, still under a clip norm of 1
        r.loss = 0.0003
    for r in records:
        r.grad_norm = r.grad_norm if r.grad_norm == 0.5 else 0.01
    assert run_rule("loss_spikes", records) == [] and run_rule("grad_norm", records) == []


def test_bouncing_loss_is_oscillation():
    records = train_curve(lambda s: healthy_train(s) * (1.5 if s % 2 else 0.7), noise=0.02)
    [finding] = run_rule("oscillation", records)
    assert finding.verdict == "unstable" and finding.evidence["ratio"] > SETTINGS.oscillation_ratio
    assert any(c.key == "warmup_ratio" for c in finding.changes)


def test_noisy_small_batches_warn_but_do_not_make_a_run_unstable():
    records = train_curve(healthy_train, n=400, noise=0.4, seed=5)  # batch-size-1 noise, no zig-zag
    [finding] = run_rule("oscillation", records)
    assert finding.verdict is None and abs(finding.evidence["zigzag"]) < 0.25
    assert "noisy batches" in finding.message


def test_grad_norm_explosions_warn_and_many_are_unstable():
    records = train_curve(healthy_train)
    for i in (50, 100, 150):
        records[i].grad_norm = 40.0
    [finding] = run_rule("grad_norm", records)
    assert finding.evidence["count"] == 3 and finding.verdict is None  # clipped and the loss is fine
    assert finding.steps == [51, 101, 151]
    for i in range(30, 200, 20):
        records[i].grad_norm = 40.0
    assert run_rule("grad_norm", records)[0].verdict == "unstable"


def test_grad_norm_growing_steadily_is_unstable():
    records = train_curve(healthy_train, noise=0.01)
    for r in records:
        r.grad_norm = 0.5 * 1.03**r.step
    [finding] = run_rule("grad_norm", records)
    assert finding.evidence["growth"] > SETTINGS.grad_norm_factor


def test_flat_loss_is_stalled_with_pipeline_checks():
    records = train_curve(lambda s: 2.3, noise=0.01, lr=0.0)
    [finding] = run_rule("stalled", records)
    assert finding.verdict == "stalled" and "learning rate is 0" in finding.message
    assert any("label" in check for check in finding.evidence["checks"])


def test_a_loss_that_moved_once_and_froze_is_stalled_and_a_too_high_lr_is_lowered():
    records = train_curve(lambda s: 6.2 if s < 5 else 5.96, n=150, noise=0.005, lr=0.3)
    [finding] = run_rule("stalled", records, method="lora", num_params=int(1e6))
    assert finding.evidence["second_half_improvement"] < 0.01
    assert "flat over the second half" in finding.message
    [change] = finding.changes
    assert change.key == "learning_rate" and change.value < 0.3


def test_loss_still_falling_steeply_is_underfitting():
    records = train_curve(lambda s: 3.0 - s / 150, noise=0.01)
    [finding] = run_rule("underfitting", records)
    assert finding.verdict == "underfitting" and finding.evidence["tail_drop"] > SETTINGS.underfit_min_drop


def test_a_long_flattening_tail_is_convergence_not_underfitting():
    records = train_curve(lambda s: 0.5 + 3.0 * math.exp(-s / 30) + 0.25 * (1 - s / 200), noise=0.0)
    assert run_rule("underfitting", records) == []  # the tail falls ~10%, at a tenth of the run's pace


def test_eval_still_improving_at_the_end_is_underfitting():
    records = [*train_curve(healthy_train), *eval_curve(lambda s: 3.0 - s / 100)]
    [finding] = run_rule("underfitting", records)
    assert finding.evidence["last_eval_drop"] > 0


def test_overfitting_from_which_step_by_how_much():
    records = [
        *train_curve(lambda s: 2.0 * math.exp(-s / 60) + 0.2),
        *eval_curve(lambda s: 1.0 + ((s - 80) / 100) ** 2),
    ]
    [finding] = run_rule("overfitting", records)
    assert finding.evidence["from_step"] == 80 and finding.severity == "error"
    assert finding.evidence["rise_relative"] == pytest.approx(1.44, rel=0.05)
    assert finding.evidence["train_loss_at_end"] < finding.evidence["train_loss_at_best"]


def test_overfitting_on_the_real_llamafactory_log():
    log = read_log(FIXTURES / "lf_qwen25_7b_medical_qlora")
    [finding] = RULES["overfitting"].fn(view_of(log, SETTINGS))
    assert finding.evidence["from_step"] == 4500 and finding.evidence["from_epoch"] == 2.0
    assert 0.01 < finding.evidence["rise_relative"] < 0.03 and finding.severity == "warning"


def test_per_epoch_evals_one_clear_rise_is_overfitting_a_small_one_is_not():
    train = train_curve(lambda s: 0.6 * math.exp(-s / 100) + 0.1, n=300)
    clear = [EvalPoint(100, 0.35), EvalPoint(200, 0.30), EvalPoint(300, 0.33)]  # +10% at the last epoch
    [finding] = run_rule("overfitting", [*train, *clear])
    assert finding.evidence["from_step"] == 200 and finding.evidence["rise_relative"] == pytest.approx(0.1)
    small = [EvalPoint(100, 0.35), EvalPoint(200, 0.30), EvalPoint(300, 0.306)]  # +2%: noise for one eval
    assert run_rule("overfitting", [*train, *small]) == []


def test_noisy_flat_eval_losses_are_not_overfitting():
    """A small eval set: +-3% noise around a plateau. Its lowest point is luck, not a turning point."""
    wobble = [0.0, 0.03, -0.02, 0.01, -0.03, 0.02, 0.0, -0.01, 0.03, 0.01, 0.02, 0.03]
    records = [
        *train_curve(healthy_train, n=240),
        *[EvalPoint(step=20 * (i + 1), eval_loss=1.2 * (1 + w)) for i, w in enumerate(wobble)],
    ]
    assert run_rule("overfitting", records) == []


def test_fast_convergence_within_the_first_window_is_not_stalled():
    records = train_curve(lambda s: 1.0 + 2.0 * math.exp(-s / 3), n=600, noise=0.02)
    assert run_rule("stalled", records) == []


def test_eval_rising_with_train_rising_is_not_called_overfitting_but_divergence():
    records = [*train_curve(lambda s: 1.0 + s / 500), *eval_curve(lambda s: 1.0 + s / 100)]
    assert run_rule("overfitting", records) == []
    [finding] = run_rule("eval_divergence", records)
    assert finding.verdict == "diverged" and finding.evidence["from_step"] == 20
    milder = [*train_curve(lambda s: 1.0 + s / 2000), *eval_curve(lambda s: 1.0 + s / 500)]
    assert run_rule("eval_divergence", milder)[0].verdict == "unstable"


def test_widening_train_eval_gap():
    records = [*train_curve(lambda s: 0.2 + 2.0 * math.exp(-s / 30)), *eval_curve(lambda s: 1.1)]
    [finding] = run_rule("train_eval_gap", records)
    assert finding.evidence["last_gap"] > SETTINGS.gap_ratio


@pytest.mark.parametrize(
    ("method", "params", "lr", "fires"),
    [
        ("lora", 7e9, 2e-4, False),
        ("lora", 7e9, 5e-3, True),
        ("lora", 7e9, 1e-6, True),
        ("full", 7e9, 2e-5, False),
        ("full", 70e9, 1e-4, True),
        ("full", 1.35e8, 1e-4, False),
        (None, None, 5e-4, False),
        (None, None, 1e-1, True),
    ],
)
def test_learning_rate_out_of_usual_range(method, params, lr, fires):
    findings = run_rule("lr_range", train_curve(healthy_train), method=method, num_params=params, learning_rate=lr)
    assert bool(findings) == fires
    if fires:
        suggested, evidence = findings[0].changes[0].value, findings[0].evidence
        assert evidence["low"] <= suggested <= evidence["high"]
        assert (suggested < lr) == (lr > evidence["high"])


def test_lr_range_scales_with_model_size():
    small, big = lr_range("full", int(1e8)), lr_range("full", int(70e9))
    assert small[1] > big[1] and lr_range("lora", int(7e9))[1] == pytest.approx(1e-3 * (1 / 7) ** 0.25)


def test_too_few_points_and_cut_off_runs_are_too_short():
    [few] = run_rule("too_few_points", train_curve(healthy_train, n=4))
    assert few.verdict == "too-short" and few.evidence["points"] == 4
    assert run_rule("too_few_points", train_curve(healthy_train, n=5)) == []  # 5 points: judged (low confidence)
    [cut] = run_rule("too_few_points", train_curve(healthy_train, n=50), planned_steps=1000)
    assert cut.code == "cut_off" and cut.verdict == "too-short"
    [late] = run_rule("too_few_points", train_curve(healthy_train, n=500), planned_steps=1000)
    assert late.severity == "info" and late.verdict is None


def test_no_eval_data_says_overfitting_cannot_be_judged():
    [finding] = run_rule("no_eval_data", train_curve(healthy_train))
    assert finding.severity == "info" and "cannot be judged" in finding.message
    accuracy_only = [*train_curve(healthy_train), EvalPoint(step=100, eval_loss=None, metrics={"accuracy": 0.8})]
    assert "accuracy" in run_rule("no_eval_data", accuracy_only)[0].message


def test_no_training_data():
    [finding] = run_rule("no_training_data", [EvalPoint(step=10, eval_loss=None, metrics={"wer": 31.0})])
    assert finding.verdict == "no-training-data" and "only 1 evaluation" in finding.message


def test_noisy_per_step_healthy_run_stays_healthy():
    """Per-step logging with small batches: 15% noise on a falling curve is normal, not a finding."""
    records = [*train_curve(healthy_train, n=600, noise=0.15, seed=3), *eval_curve(healthy_eval, every=50, n=600)]
    assert diagnose(as_log(records)).verdict == "healthy"


def test_a_loss_that_goes_negative_is_not_judged_by_ratios():
    """Some preference-optimisation losses cross zero; a ratio to a negative minimum means nothing."""
    records = train_curve(lambda s: max(-0.5, 0.7 - s / 100) if s < 150 else -0.4, noise=0.02)
    for code in ("divergence", "stalled", "loss_spikes", "oscillation"):
        assert problems(run_rule(code, records)) == [], code


def test_a_train_step_without_loss_is_ignored_by_the_rules():
    records = [*healthy(), TrainStep(step=201, loss=None)]
    assert diagnose(as_log(records, method="lora", learning_rate=1e-4)).verdict == "healthy"


def test_flat_noisy_evals_with_a_low_start_are_not_overfitting():
    """+-3% noise around a plateau, the lowest points early: the old noise estimate (spread around a
    centred median of 3, which is often the point itself) read this as a rise."""
    wobble = [-0.036, -0.005, 0.016, -0.004, 0.003, -0.031, -0.005, -0.008, 0.019, 0.003]
    records = [
        *train_curve(lambda s: 2.0 - s / 1000, n=1000, noise=0.0),
        *[EvalPoint(step=100 * (i + 1), eval_loss=round(1.2 * (1 + w), 4)) for i, w in enumerate(wobble)],
    ]
    assert run_rule("overfitting", records) == []


def test_a_steady_small_rise_over_the_last_evals_is_overfitting():
    """Smooth evals that bottom out and then rise 1.5% over four evals in a row: a trailing median of
    the evals lags such a rise by one eval and used to hide it."""
    evals = [1.30, 1.20, 1.14, 1.10, 1.085, 1.080, 1.084, 1.088, 1.092, 1.096]
    records = [
        *train_curve(lambda s: 2.0 * math.exp(-s / 300) + 0.5, n=1000, noise=0.0),
        *[EvalPoint(step=100 * (i + 1), eval_loss=e) for i, e in enumerate(evals)],
    ]
    [finding] = run_rule("overfitting", records)
    assert finding.evidence["from_step"] == 600
    assert finding.evidence["rise_relative"] == pytest.approx(0.015, abs=0.001)


def test_train_loss_still_falling_is_not_underfitting_when_the_eval_loss_stopped_improving():
    train = train_curve(lambda s: 1.0 + 2.0 * math.exp(-s / 150), n=200, noise=0.0)
    assert run_rule("underfitting", train)  # alone, a train loss still falling steeply is underfitting
    flat = [EvalPoint(40, 1.5), EvalPoint(80, 1.4), EvalPoint(120, 1.38), EvalPoint(160, 1.385), EvalPoint(200, 1.39)]
    assert run_rule("underfitting", [*train, *flat]) == []
