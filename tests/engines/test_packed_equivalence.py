"""A trial trained inside a pack of mixed trials is the trial trained alone, and is standard LoRA.

fp32 on CPU with the tiny model and synthetic token data: loss, grad-norm and eval curves of each
trial in a pack of three very different trials equal those of the same trial alone (K=1) within
1e-5; a dropout-free trial equals the same trial trained by plain PEFT (get_peft_model + AdamW +
get_scheduler + clipping); the exported adapter loads with PeftModel.from_pretrained and gives the
packed trial's logits.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from tunepilot.config import build_config
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.packed import PackedEngine
from tunepilot.engines.packed.export import export_adapter
from tunepilot.stream import EvalPoint, Event, TrainStep, read_stream


def synthetic_examples(n: int, vocab: int, seed: int) -> list[dict]:
    """Token sequences of varied length; the first few positions are a masked 'prompt'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(6, 14)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, 4)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def make_config(model_dir, **overrides):
    raw = {
        "model_name_or_path": str(model_dir),
        "dataset": "synthetic",
        "cutoff_len": 16,
        "per_device_eval_batch_size": 4,
        "lora_dropout": 0.0,
    }
    raw.update(overrides)
    wild_lr = raw.pop("learning_rate") if raw.get("learning_rate", 0) > 10 else None
    config = build_config(raw, check_paths=False)[0]
    if wild_lr is not None:  # past the config's bound on purpose: a trial that must diverge
        object.__setattr__(config.train, "learning_rate", wild_lr)
    return config


MIXED = {  # three trials that differ in everything a trial owns
    1: dict(
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.1,
        lora_target="all-linear",
        learning_rate=3e-3,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        max_steps=4,
        warmup_steps=1,
        lr_scheduler_type="cosine",
        seed=1,
    ),
    2: dict(
        lora_rank=8,
        lora_alpha=4,
        use_rslora=True,
        lora_target="q_proj,v_proj",
        learning_rate=1e-2,
        gradient_accumulation_steps=1,
        per_device_train_batch_size=3,
        max_steps=6,
        lr_scheduler_type="linear",
        seed=2,
        weight_decay=0.1,
    ),
    3: dict(
        lora_rank=2,
        lora_alpha=16,
        lora_dropout=0.2,
        lora_target="o_proj,down_proj",
        learning_rate=5e-3,
        gradient_accumulation_steps=3,
        per_device_train_batch_size=1,
        max_steps=3,
        lr_scheduler_type="constant",
        max_grad_norm=0.05,
        seed=3,
    ),
}


@pytest.fixture(scope="module")
def load(tiny_model):
    from transformers import AutoModelForCausalLM

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)

    return fresh


@pytest.fixture(scope="module")
def data(load):
    vocab = load().config.vocab_size
    train, evals = synthetic_examples(24, vocab, 0), synthetic_examples(6, vocab, 1)
    return lambda cfg: (train, evals)


def run_engine(load, data, tiny_model, tmp_path, trials: dict, slots: int, fractions=(0.5, 1.0)):
    engine = PackedEngine(make_config(tiny_model), slots, model=load(), pad_id=0, data=data, chunk_rows=7)
    for number, params in trials.items():
        engine.start(
            TrialSpec(
                number,
                params,
                make_config(tiny_model, **params),
                run_dir=tmp_path / f"t{number}",
                report_fractions=fractions,
            )
        )
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    return {o.number: o for o in outcomes}


def curves(run_dir):
    records = read_stream(run_dir / "metrics.jsonl")
    train = [(r.loss, r.grad_norm, r.lr, r.tokens) for r in records if isinstance(r, TrainStep)]
    evals = [r.eval_loss for r in records if isinstance(r, EvalPoint) and r.step > 0]  # not the step-0 baseline
    return train, evals


def assert_equals_alone(load, data, tiny_model, tmp_path, number: int, params: dict, outcome, steps: int):
    """Packed trial `number` (its stream under tmp_path/pack) completed and equals the same trial alone."""
    alone = run_engine(load, data, tiny_model, tmp_path / "alone", {number: params}, slots=1, fractions=(1.0,))
    got, want = curves(tmp_path / "pack" / f"t{number}"), curves(tmp_path / "alone" / f"t{number}")
    assert outcome.state == "complete" and len(got[0]) == steps
    for g, w in zip(got[0], want[0], strict=True):
        assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
    assert outcome.value == pytest.approx(alone[number].value, abs=1e-5)


def test_packed_trials_equal_trials_alone(load, data, tiny_model, tmp_path):
    packed = run_engine(load, data, tiny_model, tmp_path / "pack", MIXED, slots=3)
    for number, params in MIXED.items():
        alone = run_engine(load, data, tiny_model, tmp_path / f"alone{number}", {number: params}, slots=1)
        assert packed[number].state == alone[number].state == "complete"
        got, want = (
            curves(tmp_path / "pack" / f"t{number}"),
            curves(tmp_path / f"alone{number}" / f"t{number}"),
        )
        assert len(got[0]) == params["max_steps"] and len(got[1]) == 2
        for g, w in zip(got[0], want[0], strict=True):
            assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
            assert g[2] == pytest.approx(w[2], rel=1e-12) and g[3] == w[3]
        assert got[1] == pytest.approx(want[1], abs=1e-5)
        assert packed[number].value == pytest.approx(alone[number].value, abs=1e-5)
    # the trials really differ: different curves, and training moved each one's loss
    firsts = {n: curves(tmp_path / "pack" / f"t{n}")[0] for n in MIXED}
    assert len({round(c[0][0], 6) for c in firsts.values()}) == 3
    assert all(c[-1][0] != c[0][0] for c in firsts.values())


def test_batched_path_trials_equal_trials_alone(load, data, tiny_model, tmp_path):
    """Equal micro-batches and no dropout: the layers take the batched path (ranks 2 and 8 padded)."""
    same_shape = {
        4: {**MIXED[2], "max_steps": 3, "lora_target": "all-linear"},
        5: {
            **MIXED[2],
            "max_steps": 3,
            "lora_rank": 2,
            "lora_alpha": 16,
            "use_rslora": False,
            "seed": 5,
            "learning_rate": 2e-3,
            "lora_target": "all-linear",
        },
    }
    packed = run_engine(load, data, tiny_model, tmp_path / "pack", same_shape, slots=2)
    for number, params in same_shape.items():
        alone = run_engine(load, data, tiny_model, tmp_path / f"alone{number}", {number: params}, slots=1)
        got, want = (
            curves(tmp_path / "pack" / f"t{number}"),
            curves(tmp_path / f"alone{number}" / f"t{number}"),
        )
        assert len(got[0]) == 3
        for g, w in zip(got[0], want[0], strict=True):
            assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
        assert packed[number].value == pytest.approx(alone[number].value, abs=1e-5)


def test_a_diverging_trial_fails_alone_and_its_pack_mate_is_untouched(load, data, tiny_model, tmp_path):
    """A trial whose loss turns non-finite leaves with the step it happened at; the trial packed with
    it trains exactly as it does alone (its rows, weights and optimizer never see the other's)."""
    steady = {**MIXED[2], "max_steps": 6, "lora_target": "all-linear"}
    wild = {**steady, "learning_rate": 1e30, "seed": 9, "max_grad_norm": 0.0}
    packed = run_engine(load, data, tiny_model, tmp_path / "pack", {1: steady, 2: wild}, slots=2, fractions=(1.0,))
    assert packed[2].state == "failed" and packed[2].reason.startswith("loss is ")
    failed_at = int(packed[2].reason.rsplit(" ", 1)[1])
    written = [r.step for r in read_stream(tmp_path / "pack" / "t2" / "metrics.jsonl") if isinstance(r, TrainStep)]
    assert 1 < failed_at < 6 and written == list(range(1, failed_at))  # the bad step is not logged as a loss
    assert_equals_alone(load, data, tiny_model, tmp_path, 1, steady, packed[1], steps=6)


def test_the_health_monitor_stops_a_packed_trial_and_its_pack_mate_is_untouched(load, data, tiny_model, tmp_path):
    """Each packed trial has the standard engine's live monitor (its own `health` settings): alerts go to
    its stream, and a stop ends that trial alone as failed with the rule's code. The tiny model cannot
    diverge for real, so the watched trial's rule is set to call any rise above its best loss a divergence."""
    steady = {**MIXED[2], "max_steps": 6, "lora_target": "all-linear"}
    touchy = {
        **steady,
        "seed": 9,
        "learning_rate": 0.5,
        "health": {"divergence_factor": 1.0001, "divergence_patience": 1, "min_points": 2, "smooth_window": 1},
    }
    packed = run_engine(load, data, tiny_model, tmp_path / "pack", {1: steady, 2: touchy}, slots=2, fractions=(1.0,))
    assert packed[2].state == "failed" and packed[2].reason == "health.stop", packed[2]  # as the standard engine
    records = read_stream(tmp_path / "pack" / "t2" / "metrics.jsonl")
    events = [r for r in records if isinstance(r, Event)]
    assert "health.lr_range" in {e.code for e in events}  # an alert: lr 0.5 is far above LoRA's usual range
    found, stop = events[-2:]
    assert found.code == "health.stop" and found.data["rule"] == "divergence"
    assert stop.code == "stop" and stop.data == {"reason": "health.stop"} and stop.step == found.step
    steps = [r.step for r in records if isinstance(r, TrainStep)]
    assert steps[-1] == stop.step < 6
    assert json.loads((tmp_path / "pack" / "t2" / "summary.json").read_text())["stop_reason"]["code"] == "health.stop"
    assert_equals_alone(load, data, tiny_model, tmp_path, 1, steady, packed[1], steps=6)


def test_out_of_memory_fails_the_packs_trials_for_a_retry_and_drops_a_slot(
    load, data, tiny_model, tmp_path, monkeypatch
):
    """A packed step that runs out of GPU memory (simulated: more than two slots' rows) fails its trials as
    out of memory (the sweep loop then retries them with half the micro-batch); the engine goes on with one
    slot fewer, and a trial started afterwards trains exactly as it does alone."""
    from tunepilot.engines.summary import FailureKind

    engine = PackedEngine(make_config(tiny_model), 3, model=load(), pad_id=0, data=data, chunk_rows=7)
    losses = engine.pack.losses

    def two_slots_fit(micro, training, seeds=None):
        if len(micro) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return losses(micro, training, seeds)

    monkeypatch.setattr(engine.pack, "losses", two_slots_fit)
    trial = {**MIXED[2], "max_steps": 3, "lora_target": "all-linear"}

    def start(number):
        cfg = make_config(tiny_model, **trial)
        engine.start(TrialSpec(number, trial, cfg, run_dir=tmp_path / "pack" / f"t{number}", report_fractions=(1.0,)))

    for number in (0, 1, 2):
        start(number)
    failed = engine.advance()
    assert sorted(o.number for o in failed) == [0, 1, 2]
    assert all(o.state == "failed" and o.failure == FailureKind.OOM and "20.00 GiB" in o.reason for o in failed), failed
    assert engine.slots == 2 and engine.active == []
    assert not engine.pack.bank.weights.detach().any() and not engine.pack.bank.weights.grad.any()
    start(3)
    done = []
    while engine.active:
        done += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    assert [o.number for o in done] == [3]
    assert_equals_alone(load, data, tiny_model, tmp_path, 3, trial, done[0], steps=3)


def peft_reference(load, data, cfg, init_state: dict, steps: int):
    """The same trial with plain PEFT and the standard loop: loss and grad norm per optimizer step."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import get_scheduler

    from tunepilot.data.batching import collate
    from tunepilot.engines.plan import make_plan, step_indices

    m, t = cfg.method, cfg.train
    model = get_peft_model(
        load(),
        LoraConfig(
            r=m.lora_rank,
            lora_alpha=m.alpha,
            lora_dropout=0.0,
            target_modules=m.lora_target,
            use_rslora=m.use_rslora,
        ),
    )
    set_peft_model_state_dict(model, init_state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_epsilon,
        weight_decay=t.weight_decay,
    )
    train, _ = data(cfg)
    plan = make_plan(t, len(train))
    sched = get_scheduler(t.lr_scheduler_type, opt, num_warmup_steps=plan.warmup_steps, num_training_steps=steps)
    out = []
    for step in range(1, steps + 1):
        batches = [collate([train[i] for i in idx], 0) for idx in step_indices(plan, t.seed, step)]
        n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        total = 0.0
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            summed = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
            )
            (summed / n).backward()
            total += summed.item()
        norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        out.append((total / n, float(norm)))
    return out


def test_packed_trial_is_standard_peft_lora_and_exports_a_peft_adapter(load, data, tiny_model, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    params = {**MIXED[2], "max_steps": 4}
    neighbour = {**MIXED[1], "max_steps": 8}  # a pack neighbour, so the checked trial is not alone
    # fused RMSNorm kernels, as on GPU (on CPU the engine keeps transformers' own by default)
    engine = PackedEngine(make_config(tiny_model), 2, model=load(), pad_id=0, data=data, chunk_rows=5, fuse_norms=True)
    assert engine.pack.fused_norms == 5
    cfg = make_config(tiny_model, **params)
    engine.start(TrialSpec(7, params, cfg, run_dir=tmp_path / "t7", report_fractions=(0.5, 1.0)))
    engine.start(TrialSpec(8, neighbour, make_config(tiny_model, **neighbour), report_fractions=(1.0,)))
    export_adapter(tmp_path / "init", engine.pack.wrapped, 0, engine._extra[0]["targets"], cfg.method, "x")
    init = load_file(tmp_path / "init" / "adapter_model.safetensors")
    progress = engine.advance()  # trial 7 reports at half of its schedule; both stay active
    assert [(p.number, p.fraction) for p in progress] == [(7, 0.5)] and engine.active == [7, 8]
    ids = torch.tensor(data(cfg)[1][0]["input_ids"]).unsqueeze(0)
    packed_logits = engine.pack.logits(0, ids)
    export_adapter(tmp_path / "mid", engine.pack.wrapped, 0, engine._extra[0]["targets"], cfg.method, "x")
    while 7 in engine.active:
        engine.advance()

    reference = peft_reference(load, data, cfg, init, 4)
    got = curves(tmp_path / "t7")[0]
    for (loss, norm, _, _), (ref_loss, ref_norm) in zip(got, reference, strict=True):
        assert loss == pytest.approx(ref_loss, abs=1e-5) and norm == pytest.approx(ref_norm, abs=1e-5)

    peft_model = PeftModel.from_pretrained(load(), tmp_path / "mid")
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, packed_logits, atol=1e-5)
        assert not torch.allclose(load()(input_ids=ids).logits, packed_logits, atol=1e-3)  # adapter matters
    final = PeftModel.from_pretrained(load(), tmp_path / "t7" / "adapter")  # the exported final adapter
    assert final.peft_config["default"].r == 8 and final.peft_config["default"].use_rslora
    engine.close()


def test_packed_trial_equals_the_standard_engine_trial(tiny_config, tmp_path):
    """Real data path (prepare_datasets), real model loading: the packed trial is `tunepilot train`'s run."""
    from safetensors.torch import load_file

    from tunepilot.engines.run import TrainingRun
    from tunepilot.models import load_trainable_state

    cfg = tiny_config(
        lora_dropout=0.0,
        lora_rank=4,
        lora_alpha=16,
        use_rslora=True,
        learning_rate=5e-3,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=3,
        max_steps=4,
        weight_decay=0.01,
        max_grad_norm=0.5,
        lora_target="q_proj,down_proj",
        device="cpu",
    )
    engine = PackedEngine(cfg, 1)
    engine.start(TrialSpec(0, {}, cfg, run_dir=tmp_path / "packed", report_fractions=(0.5, 1.0)))
    export_adapter(tmp_path / "init", engine.pack.wrapped, 0, engine._extra[0]["targets"], cfg.method, "x")
    init = load_file(tmp_path / "init" / "adapter_model.safetensors")
    outcome = engine.advance() + engine.advance()
    engine.close()

    run = TrainingRun(cfg, tmp_path / "standard", eval_fractions=(0.5, 1.0))
    run.setup()
    load_trainable_state(run.model, {k.replace(".weight", ".default.weight"): v for k, v in init.items()})
    points = list(run.steps())
    summary = run.finish().to_json()
    got, want = curves(tmp_path / "packed"), curves(tmp_path / "standard")
    assert len(got[0]) == 4 and len(want[0]) == 4 and len(points) == 2
    for g, w in zip(got[0], want[0], strict=True):
        assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
        assert g[2] == pytest.approx(w[2], rel=1e-9) and g[3] == w[3]
    assert got[1] == pytest.approx(want[1], abs=1e-5)
    assert outcome[-1].state == "complete" and outcome[-1].value == pytest.approx(summary["best_eval_loss"], abs=1e-5)
