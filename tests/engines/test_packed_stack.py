"""Stacked slot weights: a trial's views, optimizer state and curve survive the stacks growing under it."""

from __future__ import annotations

import pytest
import torch
from test_packed_equivalence import curves, make_config, synthetic_examples

from tunepilot.engines.base import TrialSpec
from tunepilot.engines.packed import PackedEngine

FIRST = dict(
    lora_rank=2,
    lora_alpha=4,
    learning_rate=5e-3,
    max_steps=4,
    per_device_train_batch_size=2,
    weight_decay=0.1,
    max_grad_norm=0.05,
    seed=1,
)
SECOND = dict(lora_rank=8, lora_alpha=8, learning_rate=1e-2, max_steps=2, per_device_train_batch_size=2, seed=2)


def _engine(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    train, evals = synthetic_examples(16, model.config.vocab_size, 0), synthetic_examples(4, model.config.vocab_size, 1)
    return PackedEngine(make_config(tiny_model), 2, model=model, pad_id=0, data=lambda cfg: (train, evals))


def _finish(engine):
    while engine.active:
        engine.advance()
    engine.close()


def test_a_trial_is_unchanged_when_a_larger_trial_grows_the_stacks(tiny_model, tmp_path):
    engine = _engine(tiny_model)
    cfg = make_config(tiny_model, **FIRST)
    engine.start(TrialSpec(1, FIRST, cfg, run_dir=tmp_path / "grown", report_fractions=(0.5, 1.0)))
    engine.advance()  # two optimizer steps alone: AdamW state exists for its rank-2 views
    layer, bank = next(iter(engine.pack.wrapped.values())), engine.pack.bank
    assert layer.stack.capacity == (2, 2)  # the engine's two slots, the first trial's rank
    moments = engine._slots[0].optimizer.state[engine._slots[0].params[0]]["exp_avg"].clone()
    engine.start(TrialSpec(2, SECOND, make_config(tiny_model, **SECOND), report_fractions=(1.0,)))
    assert layer.stack.capacity == (2, 8)  # a larger rank: the bank is re-laid out, every view re-pointed
    ad, row = layer.stack.adapters[0], engine._slots[0].params[0]
    assert ad.lora_A.data_ptr() == layer.stack.A.data_ptr() == row.data_ptr() == bank.weights.data_ptr()
    assert ad.lora_A.grad.data_ptr() == layer.stack.A_grad.data_ptr() == row.grad.data_ptr()
    assert torch.equal(layer.stack.A[0, 2:], torch.zeros_like(layer.stack.A[0, 2:]))  # padding stays zero
    assert moments.abs().sum() > 0
    moved = engine._slots[0].optimizer.state[row]["exp_avg"]  # the AdamW moments moved with the weights
    assert moved.shape == row.shape and torch.equal(
        bank.blocks(moved.view(1, -1))[0][0][0, :2], bank.blocks(moments.view(1, -1), rank=2)[0][0][0]
    )
    _finish(engine)

    alone = _engine(tiny_model)
    alone.start(
        TrialSpec(1, FIRST, make_config(tiny_model, **FIRST), run_dir=tmp_path / "alone", report_fractions=(0.5, 1.0))
    )
    _finish(alone)
    got, want = curves(tmp_path / "grown"), curves(tmp_path / "alone")
    assert len(got[0]) == 4
    for g, w in zip(got[0], want[0], strict=True):
        assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
    assert got[1] == pytest.approx(want[1], abs=1e-5)
