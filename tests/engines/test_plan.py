from tunepilot.config import TrainSettings
from tunepilot.engines.plan import make_plan, micro_batch_indices, step_indices


def test_derived_values():
    plan = make_plan(
        TrainSettings(
            per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2, warmup_ratio=0.1
        ),
        n_train=30,
    )
    assert plan.micro_batches_per_epoch == 8
    assert plan.effective_batch == 8
    assert plan.total_steps == 8  # 16 micro-batches / 2
    assert plan.warmup_steps == 1
    assert make_plan(TrainSettings(max_steps=5, warmup_steps=3), 10).total_steps == 5


def test_each_epoch_is_a_permutation_and_order_is_reproducible():
    plan = make_plan(TrainSettings(per_device_train_batch_size=3), n_train=10)
    epoch0 = [i for m in range(4) for i in micro_batch_indices(plan, 1, m)]
    epoch1 = [i for m in range(4, 8) for i in micro_batch_indices(plan, 1, m)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1
    assert step_indices(plan, 1, 3) == step_indices(plan, 1, 3)
    assert step_indices(plan, 1, 3) != step_indices(plan, 2, 3)
