"""The packed engine's parts: the multi-adapter layer, the chunked loss, and the slot mechanics."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_packed_equivalence import make_config, synthetic_examples

from tunepilot.engines.base import Engine, Outcome, Report, TrialSpec
from tunepilot.engines.packed import PackedEngine
from tunepilot.engines.packed.inject import add_adapters, wrap_linears
from tunepilot.engines.packed.lora import PackContext
from tunepilot.engines.packed.loss import ce_chunk, ce_chunk_fused, chunked_ce_sum, chunked_ce_sums, shifted_targets
from tunepilot.stream import EvalPoint, TrainStep, read_stream


def _layer_with_slots(ranks: list[int], rows: list[int], bias: bool = True):
    torch.manual_seed(0)
    ctx = PackContext()
    model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=bias))
    wrapped = wrap_linears_plain(model, ctx)
    for slot, r in enumerate(ranks):
        add_adapters(wrapped, ["0"], slot, r, alpha=2.0 * (slot + 1), use_rslora=slot == 1, dropout=0.0, seed=slot)
        torch.nn.init.normal_(wrapped["0"].adapters[str(slot)].lora_B)  # nonzero B: the delta matters
    starts = [sum(rows[:i]) for i in range(len(rows))]
    ctx.segments = [(s, a, a + n) for s, (a, n) in enumerate(zip(starts, rows, strict=True))]
    # as a pack does before each pass: equal segments take the batched path
    wrapped["0"].stack.prepare_pass(ctx.segments, sum(rows), False, torch.float32, torch.device("cpu"))
    return wrapped["0"], ctx


def wrap_linears_plain(model, ctx):
    model.get_output_embeddings = lambda: None  # a bare Sequential has no lm_head to leave out
    return wrap_linears(model, ctx)


@pytest.mark.parametrize("rows", [[3, 3, 3], [2, 4, 1]])  # batched (equal sizes) and per-segment paths
def test_multi_lora_layer_is_each_slots_own_lora(rows):
    layer, ctx = _layer_with_slots([2, 4, 3], rows)
    assert (layer.stack.selected is not None) == (len(set(rows)) == 1)  # the path the pack chose
    x = torch.randn(sum(rows), 4, 6)
    out = layer(x)
    out.square().sum().backward()
    for slot, a, b in ctx.segments:
        ad = layer.adapters[str(slot)]
        A, B = ad.lora_A.detach().clone().requires_grad_(), ad.lora_B.detach().clone().requires_grad_()
        ref = layer.base_layer(x[a:b]) + (x[a:b] @ A.t() @ B.t()) * ad.scaling
        ref.square().sum().backward()
        assert torch.allclose(out[a:b], ref, atol=1e-6)
        assert torch.allclose(ad.lora_A.grad, A.grad, atol=1e-5) and torch.allclose(ad.lora_B.grad, B.grad, atol=1e-5)
    assert layer.adapters["1"].scaling == pytest.approx(4.0 / 2.0)  # rsLoRA: alpha / sqrt(r), r=4


def _graph_nodes(tensor: torch.Tensor) -> set[str]:
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


@pytest.mark.parametrize("bias", [True, False])
def test_the_batched_path_adds_in_place_on_the_base_output_not_on_a_view(bias):
    # in place on a view of the output, the backward is CopySlices: a clone and a copy-back of the
    # output's gradient in every wrapped layer; on the output itself, the gradient passes through
    layer, ctx = _layer_with_slots([2, 4, 3], [3, 3, 3], bias=bias)
    x = torch.randn(9, 4, 6, requires_grad=True)
    out = layer(x)
    nodes = _graph_nodes(out)
    assert "BaddbmmBackward0" in nodes and "CopySlices" not in nodes, nodes
    out.square().sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref = torch.cat(
        [
            layer.base_layer(ref_x[a:b]) + (ref_x[a:b] @ ad.lora_A.detach().t() @ ad.lora_B.detach().t()) * ad.scaling
            for slot, a, b in ctx.segments
            for ad in [layer.adapters[str(slot)]]
        ]
    )
    ref.square().sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)  # the input gradient: base and LoRA parts


@pytest.mark.parametrize("chunk_fn,fixed", [(ce_chunk, False), (ce_chunk_fused, True)])
def test_chunked_cross_entropy_equals_the_full_loss(chunk_fn, fixed):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False).requires_grad_(False)  # the packed base is frozen
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :2] = -100
    h, y = shifted_targets(hidden, labels)
    owner = torch.tensor([0] * 5 + [1] * (len(y) - 5))  # two segments; chunks of 4 cross their border
    got = chunked_ce_sums(h, y, owner, 2, head, chunk_rows=4, chunk_fn=chunk_fn, fixed=fixed)
    (got[0] + 3 * got[1]).backward()
    grad, hidden.grad = hidden.grad.clone(), None
    logits = head(hidden)[:, :-1].flatten(0, 1)
    token = F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100, reduction="none")
    token = token[labels[:, 1:].flatten() != -100]
    want = torch.stack([token[:5].sum(), token[5:].sum()])
    (want[0] + 3 * want[1]).backward()
    assert torch.allclose(got, want, rtol=1e-6) and torch.allclose(grad, hidden.grad, atol=1e-6)
    assert chunked_ce_sum(h.detach(), y, head, chunk_rows=4).item() == pytest.approx(want.sum().item(), rel=1e-6)


@pytest.fixture
def engine(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    train, evals = (
        synthetic_examples(16, model.config.vocab_size, 0),
        synthetic_examples(4, model.config.vocab_size, 1),
    )
    eng = PackedEngine(make_config(tiny_model), 2, model=model, pad_id=0, data=lambda cfg: (train, evals))
    yield eng
    eng.close()


def test_slots_stop_and_refill_without_reloading_the_base(engine, tiny_model, tmp_path):
    assert isinstance(engine, Engine) and engine.slots == 2
    base = engine.pack.model
    for n in (1, 2):
        engine.start(
            TrialSpec(
                n,
                {"learning_rate": 1e-3 * n},
                make_config(tiny_model, max_steps=4, learning_rate=1e-3 * n),
                run_dir=tmp_path / f"t{n}",
                report_fractions=(0.5, 1.0),
            )
        )
    with pytest.raises(RuntimeError, match="slots are busy"):
        engine.start(TrialSpec(3, {}, make_config(tiny_model, max_steps=2)))
    reports = engine.advance()
    assert sorted((r.number, r.fraction, r.step) for r in reports) == [(1, 0.5, 2), (2, 0.5, 2)]
    assert all(isinstance(r, Report) for r in reports)
    pruned = engine.stop(1, "pruned by median")
    assert pruned.state == "pruned" and pruned.steps == 2 and pruned.tokens > 0 and engine.active == [2]
    assert not any("0" in layer.adapters for layer in engine.pack.wrapped.values())  # slot 0's adapters gone
    engine.start(
        TrialSpec(
            3,
            {},
            make_config(tiny_model, max_steps=2, lora_rank=2),
            run_dir=tmp_path / "t3",
            report_fractions=(1.0,),
        )
    )
    assert engine.pack.model is base and sorted(engine.active) == [2, 3]
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    assert sorted(o.number for o in outcomes) == [2, 3] and all(o.state == "complete" for o in outcomes)
    summary = json.loads((tmp_path / "t3" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2 and (tmp_path / "t3" / "adapter").is_dir()
    records = read_stream(tmp_path / "t2" / "metrics.jsonl")
    steps = [r for r in records if isinstance(r, TrainStep)]
    assert [r.step for r in steps] == [1, 2, 3, 4] and all(r.grad_norm > 0 and r.lr > 0 for r in steps)
    assert [r.step for r in records if isinstance(r, EvalPoint)] == [0, 2, 4]  # 0: the untrained baseline
    assert json.loads((tmp_path / "t1" / "summary.json").read_text())["status"] == "pruned"


def test_trials_that_cannot_run_fail_before_they_start(engine, tiny_model):
    engine.start(TrialSpec(5, {}, make_config(tiny_model, lora_target="no_such_proj")))
    engine.budget = 1000  # bytes: nothing fits
    engine.start(TrialSpec(6, {}, make_config(tiny_model, max_steps=2)))
    outcomes = engine.advance()
    assert engine.active == [] and [o.state for o in outcomes] == ["failed", "failed"]
    assert "no_such_proj" in outcomes[0].reason and "does not fit" in outcomes[1].reason


def test_the_fit_check_counts_the_bank_row_a_larger_rank_widens_for_everyone(engine, tiny_model):
    """A trial's bank row spans every wrapped layer at the bank's largest rank: a rank-16 trial next to a
    rank-2 one makes both rows rank 16 wide, which the fit check must count before it starts."""
    small, large = (
        make_config(tiny_model, max_steps=2, lora_rank=2, lora_target="q_proj"),
        make_config(tiny_model, max_steps=2, lora_rank=16, lora_target="q_proj"),
    )
    engine.start(TrialSpec(1, {}, small))
    per_row_16 = engine._estimate(large, 16)
    assert per_row_16 > engine._estimate(small, 2)  # wider rows, and all layers (not only q_proj)
    engine.budget = engine.shared + per_row_16 + engine._estimate(small, 2) + 1  # the old count fits, not the new
    engine.start(TrialSpec(2, {}, large))
    outcomes = [p for p in engine.advance() if isinstance(p, Outcome)]
    assert [(o.number, o.state) for o in outcomes if o.number == 2] == [(2, "failed")]
    assert "does not fit" in next(o.reason for o in outcomes if o.number == 2)


def test_early_stopping_patience_counts_evals_without_a_real_gain(tiny_model):
    """The run recorder (shared by both engines) keeps best and patience: a gain must beat the threshold."""
    from tunepilot.engines.recorder import RunRecorder
    from tunepilot.stream import EvalPoint

    cfg = make_config(tiny_model, early_stopping_patience=2, early_stopping_threshold=0.01, max_steps=10)
    cfg.health.enabled = False
    rec = RunRecorder(cfg, None, engine="packed", planned_steps=10)
    rec.start()
    improved = [rec.track_eval(EvalPoint(step, v), v) for step, v in ((1, 2.0), (2, 1.5), (3, 1.495))]
    assert improved == [True, True, False] and not rec.stopped  # the last gain is under the threshold
    rec.track_eval(EvalPoint(4, 1.6), 1.6)
    assert rec.stopped and rec.stop_event.code == "early_stopping"
    assert (rec.state.best_eval, rec.state.best_step) == (1.5, 2)


def test_activation_checkpointing_keeps_the_trial_and_its_dropout_masks(tiny_model, tmp_path):
    """Recomputation draws the same per-trial dropout masks, so the curves do not change."""
    from transformers import AutoModelForCausalLM

    vocab = AutoModelForCausalLM.from_pretrained(tiny_model).config.vocab_size
    train, evals = synthetic_examples(12, vocab, 0), synthetic_examples(4, vocab, 1)
    params = {"lora_dropout": 0.3, "max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 2}
    losses = {}
    for ckpt in (False, True):
        base = make_config(tiny_model, gradient_checkpointing=ckpt)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        eng = PackedEngine(base, 1, model=model, pad_id=0, data=lambda cfg: (train, evals))
        eng.start(
            TrialSpec(
                0, params, make_config(tiny_model, **params), run_dir=tmp_path / str(ckpt), report_fractions=(1.0,)
            )
        )
        assert eng.advance()[-1].state == "complete"
        records = read_stream(tmp_path / str(ckpt) / "metrics.jsonl")
        losses[ckpt] = [v for r in records if isinstance(r, TrainStep) for v in (r.loss, r.grad_norm)]
        eng.close()
    assert len(losses[True]) == 6 and losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_pack_losses_are_the_models_causal_lm_losses_per_slot(tiny_model):
    """Per slot: the summed token losses and counts of the model's own causal-LM loss (SDPA with its
    padding mask), though the pack runs right-padded rows through mask-free causal attention and
    chooses the loss positions on the host (shifted labels, prompt masked)."""
    from transformers import AutoModelForCausalLM

    from tunepilot.engines.packed.pack import Pack

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    pack = Pack(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), pad_id=0, chunk_rows=5)
    assert pack.mask_free  # the tiny model is a causal SDPA model without sliding windows
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, reference.config.vocab_size, (4, 9), generator=gen)
    lengths = [9, 6, 9, 4]  # rows 1 and 3 are right-padded in the pack
    rows = [{"input_ids": ids[i, :n].tolist(), "labels": ids[i, :n].tolist()} for i, n in enumerate(lengths)]
    for r in rows[2:]:
        r["labels"][:3] = [-100] * 3
    micro = {0: rows[:2], 1: rows[2:]}
    for slot in micro:
        add_adapters(pack.wrapped, list(pack.wrapped), slot, 2, 4.0, False, 0.0, seed=slot)  # B = 0: the base
    with torch.no_grad():
        got = pack.losses(micro, training=False)
        mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
        logits = reference(input_ids=ids, attention_mask=mask).logits
    labels = torch.tensor([r["labels"] + [-100] * (9 - len(r["labels"])) for r in rows])
    token = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none", ignore_index=-100)
    token = token.view(4, 8)
    assert got[0][1] == 8 + 5 and got[1][1] == 6 + 1
    assert got[0][0].item() == pytest.approx(token[:2].sum().item(), rel=1e-5)
    assert got[1][0].item() == pytest.approx(token[2:].sum().item(), rel=1e-5)


def test_eval_scores_count_argmax_tokens_and_whole_answers_greedy_decoding_reproduces(tiny_model):
    """Answers built from the model's own argmax predictions are reproduced by greedy decoding; the
    same answers with one token changed are not. The scores must say which is which."""
    from transformers import AutoModelForCausalLM

    from tunepilot.engines.packed.pack import Pack

    pack = Pack(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), pad_id=0, chunk_rows=3)
    add_adapters(pack.wrapped, list(pack.wrapped), 0, 2, 4.0, False, 0.0, seed=0)
    vocab = pack.head.weight.shape[0]
    rows = []
    for i, prompt in enumerate(torch.randint(3, vocab, (4, 5), generator=torch.Generator().manual_seed(1))):
        ids = prompt.tolist()
        for _ in range(3):  # greedy decoding, one token at a time
            ids.append(int(pack.logits(0, torch.tensor([ids]))[0, -1].argmax()))
        if i % 2:  # change the last answer token: that example is no longer reproduced
            ids[-1] = (ids[-1] + 1) % vocab
        rows.append({"input_ids": ids, "labels": [-100] * 5 + ids[5:]})
    loss, tokens, correct, exact, examples = pack.eval_scores({0: rows})[0].tolist()
    assert (tokens, examples, exact) == (12, 4, 2)
    assert correct == 10  # 3 + 2 + 3 + 2
    logits = torch.cat([pack.logits(0, torch.tensor([r["input_ids"]]))[0, 4:-1] for r in rows])
    targets = torch.tensor([t for r in rows for t in r["input_ids"][5:]])
    assert loss == pytest.approx(F.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-5)


def test_a_bad_slots_or_compile_option_is_a_user_error(tiny_model):
    from tunepilot.errors import UserError

    for options, key in (({"slots": 0}, "engine.slots"), ({"slots": 1, "compile": "fast"}, "engine.compile")):
        with pytest.raises(UserError, match=key):
            PackedEngine(make_config(tiny_model), model=torch.nn.Linear(1, 1), pad_id=0, **options)


def test_compile_auto_compiles_long_trials_on_cuda_only(engine, tiny_model):
    from tunepilot.engines.packed.engine import COMPILE_AUTO_STEPS

    cuda = torch.device("cuda")  # a device name only: nothing runs on it
    long, short = (make_config(tiny_model, max_steps=n) for n in (COMPILE_AUTO_STEPS, COMPILE_AUTO_STEPS - 1))
    assert engine._compile_pays(long, cuda) and not engine._compile_pays(short, cuda)
    assert not engine._compile_pays(long, torch.device("cpu"))
    epochs = make_config(tiny_model, num_train_epochs=2.0, per_device_train_batch_size=1)  # 16 rows: 32 steps
    assert not engine._compile_pays(epochs, cuda)
    assert engine._compile_pays(make_config(tiny_model, num_train_epochs=7.0, per_device_train_batch_size=1), cuda)


def test_compile_auto_on_cpu_stays_eager(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows = synthetic_examples(4, model.config.vocab_size, 0)
    config = make_config(tiny_model, max_steps=500)
    eng = PackedEngine(config, 1, model=model, pad_id=0, data=lambda cfg: (rows, rows), compile="auto")
    assert eng.compiled is False and eng.pack.chunk_fn is ce_chunk
    eng.close()


def test_a_compiled_pack_follows_new_lengths_and_slot_sets_without_new_graphs(tiny_model):
    """Real data changes the padded length every step and a sweep changes the active slots: once the
    compiled layers have gone dynamic (a new length, a new row count, one slot), neither makes a new
    graph (a graph per length or per slot set would pass torch's recompile limit, 8, and fall back to
    eager), and the losses stay the eager pack's."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from tunepilot.engines.packed.pack import Pack

    torch._dynamo.reset()
    counters.clear()
    packs = [
        Pack(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), 0, 5, compile=c)
        for c in (True, False)
    ]
    for pack in packs:
        for slot in (0, 1, 2):
            add_adapters(pack.wrapped, list(pack.wrapped), slot, 2 + 2 * slot, 4.0, False, 0.0, seed=slot)
    gen = torch.Generator().manual_seed(0)

    def run(slots: tuple[int, ...], length: int) -> None:
        ids = torch.randint(3, 100, (2 * len(slots), length), generator=gen).tolist()
        micro = {s: [{"input_ids": r, "labels": r} for r in ids[2 * i : 2 * i + 2]] for i, s in enumerate(slots)}
        with torch.no_grad():
            got, want = (pack.losses(micro, training=False) for pack in packs)
        assert [v[0].item() for v in got.values()] == pytest.approx([v[0].item() for v in want.values()], rel=1e-4)

    for slots, length in (((0, 1), 9), ((0, 1), 13), ((0, 1, 2), 13), ((1,), 13)):
        run(slots, length)
    settled = counters["stats"]["unique_graphs"]
    for slots, length in (((0, 2), 17), ((2,), 22), ((1, 2), 30), ((0, 1, 2), 11), ((0,), 26)):
        run(slots, length)
    assert counters["stats"]["unique_graphs"] == settled <= 5


COMPILE_ONCE = """
import json, sys, torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM
from tunepilot.engines.packed.inject import add_adapters
from tunepilot.engines.packed.pack import Pack

pack = Pack(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32), 0, 5, compile=True)
for slot in (0, 1):
    add_adapters(pack.wrapped, list(pack.wrapped), slot, 2, 4.0, False, 0.0, seed=slot)
ids = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(0)).tolist()
micro = {s: [{"input_ids": r, "labels": r} for r in ids[2 * s : 2 * s + 2]] for s in (0, 1)}
pack.losses(micro, training=True)[0][0].backward()
print(json.dumps(dict(counters["inductor"])))
"""


def test_a_pack_shape_compiles_once_per_machine(tiny_model, tmp_path):
    """A second process (another sweep worker, a later run) takes the compiled kernels from inductor's
    on-disk cache (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER) instead of compiling."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", COMPILE_ONCE, str(tiny_model)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()[-1]
        )
        for _ in range(2)
    ]
    first, second = runs
    assert first.get("fxgraph_cache_miss", 0) > 0 and first.get("fxgraph_cache_hit", 0) == 0
    assert (
        second.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"] and second.get("fxgraph_cache_miss", 0) == 0
    )


def test_a_pack_with_only_its_loss_compiled_trains_as_the_eager_pack(tiny_model):
    """`compile: auto` on CUDA compiles the loss chunk of short trials, whose layers stay eager: the
    per-trial loss sums and the LoRA gradients must be the all-eager pack's (run here on CPU)."""
    from transformers import AutoModelForCausalLM

    from tunepilot.engines.packed.pack import Pack

    torch._dynamo.reset()
    packs = [
        Pack(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), 0, 5, compile_loss=c)
        for c in (True, False)
    ]
    assert packs[0].chunk_fn is not ce_chunk and packs[1].chunk_fn is ce_chunk
    assert not packs[0].compiled  # the layers stay eager
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(0)).tolist()
    micro = {s: [{"input_ids": r, "labels": r} for r in ids[2 * s : 2 * s + 2]] for s in (0, 1)}
    results = []
    for pack in packs:
        for slot in micro:
            add_adapters(pack.wrapped, list(pack.wrapped), slot, 2 + 2 * slot, 4.0, False, 0.0, seed=slot)
            with torch.no_grad():  # B = 0 at init: give the deltas something to differentiate
                pack.bank.weights.data[slot].normal_(0, 0.02, generator=torch.Generator().manual_seed(slot))
        losses = pack.losses(micro, training=True)
        sum(v[0] for v in losses.values()).backward()
        results.append(([v[0].item() for v in losses.values()], pack.bank.weights.grad.clone()))
    (compiled, grad_c), (eager, grad_e) = results
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert grad_e.abs().sum() > 0 and torch.allclose(grad_c, grad_e, rtol=1e-4, atol=1e-7)
