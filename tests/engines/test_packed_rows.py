"""A compiled pack's per-row LoRA path and its counter-based dropout, run eagerly (the graph's math
without the compile time; tests/engines/test_packed_cuda.py compiles it on a GPU).

Compiled packs take one path for every layer and composition (`LoraStack.select_rows`,
`MultiLoraLinear._rows_add`), so a layer's graph is not guarded on the segments, and draw dropout
with `hashed_keep` inside the graph. Here, fp32 on CPU: dropout-free, the path gives the default
path's curves; with dropout, a trial in a pack gives the same trial alone (masks that do not depend
on the pack); and the masks keep 1 - p of the values, differently for each seed, row and layer.
"""

from __future__ import annotations

import pytest
import torch

from tests.engines.test_packed_equivalence import MIXED, curves, make_config, synthetic_examples
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.packed import PackedEngine
from tunepilot.engines.packed.lora import hashed_keep

NO_DROPOUT = {n: {**p, "lora_dropout": 0.0} for n, p in MIXED.items()}


@pytest.fixture(scope="module")
def data(tiny_model):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
    train, evals = synthetic_examples(24, vocab, 0), synthetic_examples(6, vocab, 1)
    return lambda cfg: (train, evals)


def run(tiny_model, data, out, trials: dict, rows: bool) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    engine = PackedEngine(make_config(tiny_model), len(trials), model=model, pad_id=0, data=data, chunk_rows=7)
    engine.pack.compiled = rows  # the compiled pack's path selection, without compiling
    for number, params in trials.items():
        engine.start(TrialSpec(number, params, make_config(tiny_model, **params), run_dir=out / f"t{number}"))
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    assert sorted(o.number for o in outcomes) == sorted(trials) and all(o.state == "complete" for o in outcomes)


def assert_same(got_dir, want_dir) -> None:
    (got, got_evals), (want, want_evals) = curves(got_dir), curves(want_dir)
    assert len(got) == len(want) and [g[3] for g in got] == [w[3] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[0] == pytest.approx(w[0], abs=1e-5) and g[1] == pytest.approx(w[1], abs=1e-5)
    assert got_evals == pytest.approx(want_evals, abs=1e-5)


def test_the_row_path_trains_what_the_default_path_trains(tiny_model, data, tmp_path):
    """Unequal micro-batches, different ranks and targets, no dropout: every row with its own slot's
    A and B (scaling 0 where its slot does not adapt a layer) gives the per-segment path's curves."""
    run(tiny_model, data, tmp_path / "rows", NO_DROPOUT, rows=True)
    run(tiny_model, data, tmp_path / "default", NO_DROPOUT, rows=False)
    for number in NO_DROPOUT:
        assert_same(tmp_path / "rows" / f"t{number}", tmp_path / "default" / f"t{number}")


def test_hashed_dropout_makes_a_packed_trial_the_trial_alone(tiny_model, data, tmp_path):
    """The three mixed trials (dropout 0.1, 0 and 0.2) packed: each one's curves are its own alone."""
    run(tiny_model, data, tmp_path / "pack", MIXED, rows=True)
    for number, params in MIXED.items():
        run(tiny_model, data, tmp_path / f"alone{number}", {number: params}, rows=True)
        assert_same(tmp_path / "pack" / f"t{number}", tmp_path / f"alone{number}" / f"t{number}")
    run(tiny_model, data, tmp_path / "nodrop", {1: NO_DROPOUT[1]}, rows=True)  # the masks do act (B = 0 at
    last = [curves(tmp_path / d / "t1")[0][-1][:2] for d in ("pack", "nodrop")]  # step 1, so a later step)
    assert abs(last[0][0] - last[1][0]) > 1e-6 and abs(last[0][1] - last[1][1]) > 1e-6  # same code, same run: 0


def test_hashed_keep_keeps_one_minus_p_and_differs_by_seed_and_position():
    x = torch.ones(4, 64, 256)
    p = torch.tensor([0.1, 0.5, 0.0, 0.5]).view(-1, 1, 1)
    seeds = torch.tensor([11, 11, 12, 13]).view(-1, 1, 1)
    keep = hashed_keep(x, seeds, p)
    kept = (keep > 0).float().mean(dim=(1, 2))
    assert kept[0] == pytest.approx(0.9, abs=0.01) and kept[1] == pytest.approx(0.5, abs=0.01) and kept[2] == 1.0
    assert torch.allclose(keep[1][keep[1] > 0], torch.tensor(2.0))  # inverted dropout: kept / (1 - p)
    assert not torch.equal(keep[1] > 0, keep[3] > 0)  # another seed, another mask
    assert not torch.equal(keep[1, 0] > 0, keep[1, 1] > 0)  # another position, another draw
    padded = hashed_keep(torch.ones(4, 80, 256), seeds, p)  # a wider pack: the same mask where both exist
    assert torch.equal(padded[:, :64], keep)
    rows, _ = hashed_keep(torch.ones(1, 1, 4096), torch.tensor([[[5]]]), torch.tensor([[[0.5]]])).flatten(), None
    neighbours = ((rows[1:] > 0) == (rows[:-1] > 0)).float().mean()  # no run structure between features
    assert neighbours == pytest.approx(0.5, abs=0.05)


def test_a_compiled_mixed_pack_stays_compiled_and_trains_the_row_path(tiny_model, data, tmp_path, caplog):
    """torch.compile'd layers on the mixed pack (unequal micro-batches, ranks, targets, dropout, eval
    passes): no layer reaches torch's recompile limit (past it, a layer runs eager for good), and the
    curves are the row path's run eagerly (the same hashed masks), within fp32 reassociation."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    counters.clear()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    engine = PackedEngine(make_config(tiny_model), 3, model=model, pad_id=0, data=data, chunk_rows=7, compile=True)
    for number, params in MIXED.items():
        spec = TrialSpec(
            number, params, make_config(tiny_model, **params), run_dir=tmp_path / "compiled" / f"t{number}"
        )
        engine.start(spec)
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    graphs = counters["stats"]["unique_graphs"]
    print(f"compiled mixed pack: {graphs} graphs")
    assert all(o.state == "complete" for o in outcomes) and len(outcomes) == 3, outcomes
    torch._dynamo.reset()
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()], f"{graphs} graphs"
    run(tiny_model, data, tmp_path / "rows", MIXED, rows=True)
    for number in MIXED:
        (got, got_evals), (want, want_evals) = (curves(tmp_path / d / f"t{number}") for d in ("compiled", "rows"))
        assert [g[3] for g in got] == [w[3] for w in want]
        assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-3, abs=1e-6)
        assert got_evals == pytest.approx(want_evals, abs=1e-4)
