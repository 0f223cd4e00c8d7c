"""Verdicts, their precedence, and the config patch with before/after values."""

from __future__ import annotations

import math

import pytest
from streams import FIXTURES, as_log, eval_curve, healthy, train_curve

from tunepilot.health.diagnose import diagnose
from tunepilot.health.findings import VERDICTS
from tunepilot.logs import read_log

REAL_VERDICTS = {
    "lf_qwen25_7b_medical_qlora": "overfitting",  # eval +1.7% over the 3rd epoch, train still falling
    "hf_qwen25_7b_medical_qlora_derived": "overfitting",
    "hf_distilbert_imdb_lora": "healthy",  # noisy; eval 0.395, 0.415, 0.389 ends at its best
    "hf_qvikhr_lora_noeval": "healthy",  # 2.64 -> 1.28, levels off as the LR decays
    "lf_qwen3_14b_no_points": "no-training-data",  # logging_steps 996 > 768 steps
    "lf_duplicated_lines_cutoff": "too-short",  # 100 of 6566 steps
    "lf_mistral_translator_cutoff": "too-short",  # 200 of 8660 steps
    "lf_prediction_only": "no-training-data",  # a do_predict run: progress lines only
    "lf_nine_steps": "underfitting",  # 9 steps, loss 3.34 -> 2.40 and still falling 13% at the end
    "hf_qwen05_full_verifier": "healthy",  # eval 0.108 -> 0.049, flattening as the cosine LR ends
    "hf_law_lora_sparse_logging": "healthy",  # 6 train points, but 6 evals falling steadily to a plateau
    "hf_falcon_lora_imdb_slow": "healthy",  # 3.26 -> ~2.95, slow but still moving in the second half
    "hf_lora_fast_plateau": "healthy",  # 2.31 -> 1.38 in 50 of 250 steps, then converged
    "hf_news_sentiment_classifier_overfit": "overfitting",  # eval best at epoch 3, +12% by epoch 10
    "hf_whisper_small_lr_too_high": "diverged",  # LR 3e-3: train 1.24 -> 2.16 -> 1.79, eval best at epoch 1
}


@pytest.mark.parametrize(("name", "verdict"), sorted(REAL_VERDICTS.items()))
def test_verdicts_on_real_logs(name, verdict):
    assert diagnose(read_log(FIXTURES / name)).verdict == verdict


@pytest.mark.parametrize(
    ("lf", "hf"),
    [
        ("lf_qwen25_7b_medical_qlora", "hf_qwen25_7b_medical_qlora_derived"),
        ("lf_qwen3_14b_no_points/trainer_log.jsonl", "lf_qwen3_14b_no_points/trainer_state.json"),
    ],
)
def test_same_run_as_hf_trainer_state_and_llamafactory_log_gets_the_same_verdict(lf, hf):
    from_lf, from_hf = read_log(FIXTURES / lf), read_log(FIXTURES / hf)
    assert {from_lf.source, from_hf.source} == {"llamafactory", "hf_trainer_state"}
    a, b = diagnose(from_lf), diagnose(from_hf)
    assert a.verdict == b.verdict
    assert [f.code for f in a.findings if f.verdict] == [f.code for f in b.findings if f.verdict]


def test_prediction_run_is_named_as_such():
    d = diagnose(read_log(FIXTURES / "lf_prediction_only"))
    assert "prediction run" in d.findings[0].message


def test_overfitting_patch_has_before_and_after_from_the_logged_config():
    d = diagnose(read_log(FIXTURES / "lf_qwen25_7b_medical_qlora"))
    recs = {r["key"]: r for r in d.recommendations}
    assert (recs["num_train_epochs"]["before"], recs["num_train_epochs"]["after"]) == (3.0, 2.0)
    assert (recs["lora_alpha"]["before"], recs["lora_alpha"]["after"]) == (16, 8)
    assert recs["early_stopping_patience"]["after"] == 2
    out = d.to_dict()
    assert out["patch"]["num_train_epochs"] == 2.0 and "--set num_train_epochs=2.0" in out["set_args"]
    assert "--set load_best_model_at_end=true" in out["set_args"]


def test_a_factor_on_an_unknown_value_is_reported_but_left_out_of_the_patch():
    records = [
        *train_curve(lambda s: 2.0 * math.exp(-s / 60) + 0.2),
        *eval_curve(lambda s: 1.0 + ((s - 80) / 100) ** 2),
    ]
    d = diagnose(as_log(records))
    alpha = next(r for r in d.recommendations if r["key"] == "lora_alpha")
    assert alpha["before"] is None and alpha["after"] is None and alpha["change"] == "x0.5"
    assert "lora_alpha" not in d.to_dict()["patch"]


def test_diverged_outranks_overfitting_and_its_changes_come_first():
    records = [
        *train_curve(lambda s: 2.0 * math.exp(-s / 60) + 0.2),
        *eval_curve(lambda s: 1.0 + ((s - 80) / 100) ** 2),
    ]
    records[199].loss = math.nan  # the last train step
    d = diagnose(as_log(records, learning_rate=2e-4))
    assert d.verdict == "diverged" and d.findings[0].code == "nan_inf"
    assert {f.verdict for f in d.findings} >= {"diverged", "overfitting"}
    lr = d.recommendations[0]
    assert (lr["key"], lr["before"], lr["after"]) == ("learning_rate", 2e-4, 6e-5)


def test_healthy_run_has_no_change_to_make():
    d = diagnose(as_log(healthy(), method="lora", learning_rate=1e-4, config={"lora_alpha": 16}))
    assert d.healthy and d.findings == [] and d.recommendations == []


def test_verdicts_are_the_fixed_set():
    assert VERDICTS == (
        "no-training-data",
        "diverged",
        "too-short",
        "unstable",
        "overfitting",
        "stalled",
        "underfitting",
        "healthy",
    )


def test_all_labels_masked_pattern_is_diverged(tmp_path):
    """The log_history of a real report (an IndoT5 run whose collator masked every label): eval loss NaN,
    train loss 0.0 with a NaN grad norm, BLEU kept as a metric."""
    import json

    evals = [
        {"eval_loss": float("nan"), "eval_bleu_4": 0.0277, "eval_rouge_l": 0.0, "epoch": e, "step": s}
        for e, s in ((1.0, 28), (2.0, 56), (3.0, 84))
    ]
    history = [
        evals[0],
        {"loss": 0.0, "grad_norm": float("nan"), "learning_rate": 9.8e-05, "epoch": 1.8, "step": 50},
        evals[1],
        evals[2],
        {"train_loss": 0.0, "epoch": 3.0, "step": 84},
    ]
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": history, "max_steps": 84}))  # NaN written as JSON's NaN token
    d = diagnose(read_log(path))
    assert d.verdict == "diverged" and d.findings[0].code == "nan_inf"
    assert read_log(path).eval_points[0].metrics == {"bleu_4": 0.0277, "rouge_l": 0.0}


def test_an_lr_far_too_high_is_brought_into_the_usual_range_not_just_scaled():
    records = train_curve(lambda s: 1.0 + 2.0 * math.exp(-s / 40))
    records[120].loss = math.nan
    d = diagnose(as_log(records, method="lora", learning_rate=0.5, num_params=int(7e9)))
    lr = next(r for r in d.recommendations if r["key"] == "learning_rate")
    assert lr["before"] == 0.5 and lr["after"] == pytest.approx(3e-4, rel=0.05)  # half of 6.1e-4, not 0.15


def test_a_run_length_set_by_max_steps_is_changed_through_max_steps():
    from tunepilot.health.findings import Change, Finding
    from tunepilot.health.recommend import recommendations

    finding = Finding(
        "underfitting",
        "warning",
        "still learning",
        verdict="underfitting",
        changes=[Change("num_train_epochs", "the loss had not levelled off", factor=2.0)],
    )
    by_steps = recommendations([finding], "underfitting", {"max_steps": 30, "num_train_epochs": 1.0})
    by_epochs = recommendations([finding], "underfitting", {"max_steps": -1, "num_train_epochs": 1.0})
    assert [(r["key"], r["after"]) for r in by_steps] == [("max_steps", 60)]
    assert [(r["key"], r["after"]) for r in by_epochs] == [("num_train_epochs", 2.0)]
