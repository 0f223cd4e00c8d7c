"""Several training datasets: stacked (mixed, optionally weighted) and phased (one after another).

The data order and the schedule come from `engines/plan.py` and `optimizers.py`, which both engines
use; these tests check the order itself, the config, and that a packed trial and a standard run
train the same mixture.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.engines.conftest import write_chat_jsonl
from tests.engines.test_packed_equivalence import curves
from tests.sweeps import sweep_cli
from tunepilot.config import TrainSettings, build_config
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.packed import PackedEngine
from tunepilot.engines.plan import Mixture, make_plan, step_indices
from tunepilot.errors import UserError
from tunepilot.optimizers import build_plan_scheduler


def rows_of(plan, seed: int, steps: range) -> list[int]:
    return [i for s in steps for batch in step_indices(plan, seed, s) for i in batch]


def test_weighted_stack_draws_each_dataset_by_its_weight_and_cycles_it_whole():
    train = TrainSettings(per_device_train_batch_size=5, max_steps=40)
    plan = make_plan(train, 100, Mixture("stacked", (80, 20), weights=(1.0, 1.0)))
    assert plan.quotas == (50, 50) and plan.micro_batches_per_epoch == 20
    epoch = rows_of(plan, 3, range(1, 21))  # one epoch: 20 micro-batches of 5
    small = [i for i in epoch if i >= 80]
    assert len(small) == 50  # the 20-row dataset gives half of the epoch: 2.5 passes over it
    counts = Counter(small)
    assert set(counts) == set(range(80, 100)) and max(counts.values()) - min(counts.values()) <= 1
    big = [i for i in epoch if i < 80]
    assert len(big) == len(set(big)) == 50  # the large one is not repeated within its pass
    two = rows_of(plan, 3, range(21, 41))
    assert len(set(big) | {i for i in two if i < 80}) == 80  # the next epoch goes on with its pass
    assert rows_of(plan, 3, range(1, 21)) == epoch and rows_of(plan, 4, range(1, 21)) != epoch


def test_unweighted_stack_is_the_plain_order():
    train = TrainSettings(per_device_train_batch_size=4, max_steps=5)
    plain = make_plan(train, 30)
    assert rows_of(plain, 1, range(1, 6)) == rows_of(make_plan(train, 30, None), 1, range(1, 6))


def test_phases_train_each_dataset_alone_for_its_steps_with_its_own_schedule():
    train = TrainSettings(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        warmup_ratio=0.25,
        lr_scheduler_type="linear",
        num_train_epochs=1,
    )
    plan = make_plan(train, 30, Mixture("phased", (20, 10), phase_learning_rates=(1e-3, 4e-4)))
    assert [(p.first_step, p.steps, p.warmup_steps) for p in plan.phases] == [(1, 5, 2), (6, 3, 1)]
    assert plan.total_steps == 8
    assert set(rows_of(plan, 0, range(1, 6))) == set(range(20))  # phase 1: all of dataset 1, only it
    assert set(rows_of(plan, 0, range(6, 9))) <= set(range(20, 30))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.learning_rate)
    sched = build_plan_scheduler(opt, train, plan)
    lrs = []
    for _ in range(plan.total_steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # linear warmup then decay in each phase; phase 2 peaks at its own 4e-4
    assert lrs[:5] == pytest.approx([0, 5e-4, 1e-3, 2 / 3 * 1e-3, 1 / 3 * 1e-3])
    assert lrs[5:] == pytest.approx([0, 4e-4, 2e-4])


def test_phase_steps_split_max_steps_by_size_and_must_agree_with_it():
    train = TrainSettings(max_steps=10)
    plan = make_plan(train, 40, Mixture("phased", (30, 10)))
    assert [p.steps for p in plan.phases] == [8, 2]  # 7.5 and 2.5: the larger remainder goes first
    with pytest.raises(UserError, match="data.phase_steps: they add up to 5"):
        make_plan(train, 40, Mixture("phased", (30, 10), phase_steps=(3, 2)))


def raw_config(**data):
    return {"model_name_or_path": "m", "dataset": "a.jsonl,b.jsonl", **data}


def config_problems(**data) -> str:
    with pytest.raises(UserError) as e:
        build_config(raw_config(**data), check_paths=False)
    return str(e.value)


def test_llamafactory_interleaving_becomes_a_weighted_stack():
    cfg = build_config(raw_config(mix_strategy="interleave_under", interleave_probs="0.7,0.3"), check_paths=False)[0]
    assert cfg.data.mix == "stacked" and cfg.data.mix_weights == [0.7, 0.3]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mix_weights": [1, 2, 3]}, "data.mix_weights: 3 values for 2 dataset(s)"),
        ({"mix_weights": [1, 0]}, "every value must be positive"),
        ({"phase_steps": [3, 4]}, "data.phase_steps applies to mix: phased, but data.mix is stacked"),
        ({"mix": "phased", "dataset": "a.jsonl"}, "data.mix: phased trains datasets one after another"),
        ({"mix": "shuffled"}, "data.mix"),
    ],
)
def test_bad_mixtures_are_refused_with_the_key(data, message):
    assert message in config_problems(**data)


def test_a_file_whose_name_holds_a_comma_is_one_dataset(tmp_path):
    path = tmp_path / "gsm8k,banking77.jsonl"
    path.write_text("")
    assert "data.mix_weights: 2 values for 1 dataset(s)" in config_problems(dataset=str(path), mix_weights=[1, 1])


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-datasets")
    return write_chat_jsonl(root / "a.jsonl", 24, seed=2), write_chat_jsonl(root / "b.jsonl", 12, seed=3)


MIXES = {
    "weighted": {"mix_weights": [1, 3]},
    "phased": {"mix": "phased", "phase_steps": [3, 2], "phase_learning_rates": [5e-3, 1e-3]},
}


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_packed_trial_of_a_mixture_equals_the_standard_run(mix, tiny_config, two_datasets, tmp_path):
    """The real data path tags each row with its dataset; both engines draw and schedule the same."""
    from tunepilot.engines.run import TrainingRun

    cfg = tiny_config(
        dataset=",".join(str(p) for p in two_datasets),
        lora_dropout=0.0,
        max_steps=5,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        lr_scheduler_type="cosine",
        device="cpu",
        **MIXES[mix],
    )
    torch.manual_seed(0)
    engine = PackedEngine(cfg, 1)
    engine.start(TrialSpec(0, {}, cfg, run_dir=tmp_path / "packed", report_fractions=(1.0,)))
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    run = TrainingRun(cfg, tmp_path / "standard", eval_fractions=(1.0,))
    plan = run.setup()
    assert plan.mix == cfg.data.mix and plan.sizes == (24, 12)
    list(run.steps())
    run.finish()
    got, want = curves(tmp_path / "packed"), curves(tmp_path / "standard")
    assert len(got[0]) == len(want[0]) == 5 and outcomes[0].state == "complete"
    assert [g[2] for g in got[0]] == pytest.approx([w[2] for w in want[0]], rel=1e-9)  # the same schedule
    assert [g[3] for g in got[0]] == [w[3] for w in want[0]]  # the same rows: the same token counts


def run_packed(configs: dict, slots: int, root) -> dict:
    engine = PackedEngine(next(iter(configs.values())), slots)
    for number, cfg in configs.items():
        engine.start(TrialSpec(number, {}, cfg, run_dir=root / f"t{number}", report_fractions=(1.0,)))
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    return {o.number: o for o in outcomes}


def test_packed_mixture_trials_equal_themselves_alone(tiny_config, two_datasets, tmp_path):
    dataset = ",".join(str(p) for p in two_datasets)
    configs = {
        n: tiny_config(dataset=dataset, lora_dropout=0.0, max_steps=5, device="cpu", seed=n, **MIXES[mix])
        for n, mix in enumerate(sorted(MIXES))
    }
    packed = run_packed(configs, 2, tmp_path / "pack")
    for number, cfg in configs.items():
        alone = run_packed({number: cfg}, 1, tmp_path / f"alone{number}")
        got, want = curves(tmp_path / "pack" / f"t{number}"), curves(tmp_path / f"alone{number}" / f"t{number}")
        assert packed[number].state == "complete" and len(got[0]) == 5
        for g, w in zip(got[0], want[0], strict=True):
            assert g[0] == pytest.approx(w[0], abs=1e-5) and g[2:] == pytest.approx(w[2:], rel=1e-9)
        assert packed[number].value == pytest.approx(alone[number].value, abs=1e-5)


def test_validate_reports_how_the_mix_uses_each_dataset(two_datasets, tiny_model, tmp_path):
    from tunepilot.cli.validate import validate_command

    dataset = ",".join(str(p) for p in two_datasets)
    config = tmp_path / "mix.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ndataset: {dataset}\nmix_weights: [1, 3]\n")
    body = validate_command(Path(dataset), config).data  # a Path of the comma list, as the CLI gives it
    datasets = body["stats"]["train"]["datasets"]
    assert [d["records"] for d in datasets] == [24, 12]
    assert [d["share"] for d in datasets] == [0.25, 0.75]
    assert datasets[1]["passes_per_epoch"] == pytest.approx(0.75 * 36 / 12, abs=1e-3)
    config.write_text(f"model_name_or_path: {tiny_model}\ndataset: {dataset}\nmix_weights: [1, 3, 1]\n")
    with pytest.raises(UserError, match="mix.yaml: 1 problem") as e:
        validate_command(Path(dataset), config)
    assert "data.mix_weights: 3 values for 2 dataset" in str(e.value)


def test_the_mix_strategy_is_a_searchable_key_of_a_packed_sweep(tiny_model, tiny_data, two_datasets, tmp_path):
    from tunepilot.config import load_config

    sweep = {
        "base": {
            "model_name_or_path": str(tiny_model),
            "dataset": ",".join(str(p) for p in two_datasets),
            "eval_dataset": str(tiny_data[1]),
            "cutoff_len": 64,
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "device": "cpu",
        },
        "space": {"mix": ["stacked", "phased"]},
        "sampler": {"name": "grid"},
        "pruner": "none",
        "budget": {"n_trials": 2},
        "engine": "packed",
    }
    body = sweep_cli(sweep, tmp_path)
    assert sorted(r["state"] for r in body["leaderboard"]) == ["complete", "complete"]
    mixes = sorted(load_config(d / "config.yaml")[0].data.mix for d in (tmp_path / "sw" / "trials").iterdir())
    assert mixes == ["phased", "stacked"]


def test_lr_find_ramps_a_phased_config_over_every_dataset(tiny_config, two_datasets, tmp_path):
    from tunepilot.engines.plan import plan_for
    from tunepilot.lrfind import LRFindSettings, ramp_config

    cfg = tiny_config(dataset=",".join(str(p) for p in two_datasets), **MIXES["phased"], max_steps=5)
    ramp = ramp_config(cfg, LRFindSettings(steps=12), tmp_path / "ramp")
    assert (ramp.data.mix, ramp.data.phase_steps, ramp.data.phase_learning_rates) == ("stacked", None, None)
    rows = [{"part": 0}] * 24 + [{"part": 1}] * 12
    assert plan_for(ramp, rows).total_steps == 12  # phase_steps [3, 2] would have refused 12 steps
    weighted = tiny_config(dataset=",".join(str(p) for p in two_datasets), mix_weights=[1, 3])
    assert ramp_config(weighted, LRFindSettings(steps=12), tmp_path / "w").data.mix_weights == [1, 3]
