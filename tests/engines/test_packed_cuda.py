"""The packed engine on CUDA: a packed trial is the trial alone, compiled is eager, GPU is CPU.

The CPU suite (`test_packed_equivalence.py`) proves the packing exact in fp32; this file checks the
same invariants where sweeps really run: on a CUDA GPU, in bf16 (the model dtype GPUs train in) and
fp32, eager and compiled. The tiny random model and the synthetic token data are the CPU suite's.
Every check prints its largest relative difference and its tolerance (`pytest -s` shows them, for
bench/BENCHMARKS.md), then asserts. Skipped without a GPU (CI). On a GPU machine (`python -m`, as
scripts/test.sh, so that `tests.` imports resolve):

    python -m pytest tests/engines/test_packed_cuda.py -q -s -rs
"""

from __future__ import annotations

import pytest
import torch

from tests.engines.test_packed_equivalence import MIXED, curves, make_config, synthetic_examples
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.packed import PackedEngine
from tunepilot.models import load_model, resolve_device

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (packed engine on cuda, bf16)"),
]

# bf16 keeps 8 significant bits: each rounding errs by up to 2^-8 = 3.9e-3 relative. Two bf16 runs
# of the same trial round differently (the pack pads to its longest trial and takes other matmul
# shapes, paths and kernels; compiled runs fuse other ops; CPU fp32 does not round at all), and a
# scalar loss after a few layers carries a few such roundings: 2e-2 is ~5 of them. A grad norm also
# goes through the backward pass, and AdamW's normalised step turns a small gradient difference
# into a full-size step difference where a gradient is near zero, so it gets 5e-2. These checks
# catch gross errors (a lost adapter, a wrong scaling or rows); the fp32 ones below are the sharp ones.
# For scale: bf16 on CPU (this file with DEVICE = "cpu") differed by 3e-5 (loss) and 2.5e-3 (grad norm).
BF16 = {"loss": 2e-2, "grad_norm": 5e-2, "eval_loss": 2e-2}
# fp32: unit roundoff 6e-8. The CPU suite holds to 1e-5 absolute (~2e-6 relative on losses near 6);
# on CUDA the runs also differ in reduction order (cuBLAS kernel choice by shape, atomic adds), so
# 1e-4 relative: still ~200x tighter than bf16. TF32 matmuls are switched off for these (`fp32`).
FP32 = {"loss": 1e-4, "grad_norm": 1e-4, "eval_loss": 1e-4}
TOLERANCE = {"bfloat16": BF16, "float32": FP32}
NO_DROPOUT = {n: {**p, "lora_dropout": 0.0} for n, p in MIXED.items()}  # same masks on any device
FIRST_STEPS = 3  # CUDA against CPU: bf16 and fp32 training drift apart, so the first steps only


@pytest.fixture(scope="module")
def data(tiny_model):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
    train, evals = synthetic_examples(24, vocab, 0), synthetic_examples(6, vocab, 1)
    return lambda cfg: (train, evals)


@pytest.fixture
def fp32():
    """Full fp32 matmuls on the GPU (no TF32) while a test runs."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture(scope="module", autouse=True)
def header():
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"\npacked engine on {name}, torch {torch.__version__}: largest relative difference (tolerance)")


def load(tiny_model, dtype: str, device: str = DEVICE) -> torch.nn.Module:
    """The tiny model as a run loads it: the config's model.dtype on its train.device."""
    cfg = make_config(tiny_model, dtype=dtype, device=device)
    return load_model(cfg.model, resolve_device(cfg.train.device))


def run(model, data, tiny_model, out, trials: dict, compile: bool | str = False) -> None:
    """Train `trials` packed together on `model` (one trial: alone, K=1); streams under out/t<n>."""
    engine = PackedEngine(
        make_config(tiny_model), len(trials), model=model, pad_id=0, data=data, chunk_rows=7, compile=compile
    )
    for number, params in trials.items():
        spec = TrialSpec(number, params, make_config(tiny_model, **params), run_dir=out / f"t{number}")
        engine.start(spec)
    outcomes = []
    while engine.active:
        outcomes += [p for p in engine.advance() if isinstance(p, Outcome)]
    engine.close()
    assert sorted(o.number for o in outcomes) == sorted(trials), outcomes
    assert all(o.state == "complete" for o in outcomes), outcomes


def rel(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-6)


def differences(got_dir, want_dir, steps: int | None = None) -> dict[str, float]:
    """Largest relative differences of two runs of one trial: per-step loss and grad norm, eval loss
    (`steps`: the first steps only, no eval). Same steps and token counts, exactly."""
    (got, got_evals), (want, want_evals) = curves(got_dir), curves(want_dir)
    assert [g[3] for g in got] == [w[3] for w in want] and len(got_evals) == len(want_evals)
    got, want = got[:steps], want[:steps]
    out = {
        "loss": max(rel(g[0], w[0]) for g, w in zip(got, want, strict=True)),
        "grad_norm": max(rel(g[1], w[1]) for g, w in zip(got, want, strict=True)),
    }
    if steps is None:
        out["eval_loss"] = max(rel(g, w) for g, w in zip(got_evals, want_evals, strict=True))
    return out


def check(label: str, diffs: dict[int, dict[str, float]], tolerance: dict[str, float]) -> None:
    """Print each quantity's largest difference over the trials, then assert it within tolerance."""
    worst = {k: max(d[k] for d in diffs.values()) for k in next(iter(diffs.values()))}
    print(f"  {label}: " + ", ".join(f"{k} {v:.1e} ({tolerance[k]:.0e})" for k, v in worst.items()))
    for number, d in diffs.items():
        for key, value in d.items():
            assert value <= tolerance[key], f"{label}: trial {number} {key} differs by {value:.2e} (relative)"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_packed_trials_equal_trials_alone_on_cuda(dtype, data, tiny_model, tmp_path, fp32):
    """The CPU suite's pack of three mixed trials (ranks, targets, dropout, accumulation, schedules,
    clipping) on the GPU: each trial's curves are those of the same trial trained alone (K=1)."""
    run(load(tiny_model, dtype), data, tiny_model, tmp_path / "pack", MIXED)
    diffs = {}
    for number, params in MIXED.items():
        run(load(tiny_model, dtype), data, tiny_model, tmp_path / f"alone{number}", {number: params})
        diffs[number] = differences(tmp_path / "pack" / f"t{number}", tmp_path / f"alone{number}" / f"t{number}")
    check(f"{DEVICE} {dtype} pack of 3 vs each alone", diffs, TOLERANCE[dtype])


def test_compiled_pack_equals_eager_pack_on_cuda(data, tiny_model, tmp_path):
    """`compile: true` (torch.compile'd decoder layers and loss chunk, transformers' RMSNorm instead
    of the fused eager kernel) trains the same three trials as eager, within bf16."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    run(load(tiny_model, "bfloat16"), data, tiny_model, tmp_path / "compiled", NO_DROPOUT, compile=True)
    graphs = counters["stats"]["unique_graphs"]  # printed: past torch's recompile limit a frame runs eager
    torch._dynamo.reset()
    # dropout-free: compiled packs draw their masks with a counter-based hash, eager ones from generators
    run(load(tiny_model, "bfloat16"), data, tiny_model, tmp_path / "eager", NO_DROPOUT)
    diffs = {n: differences(tmp_path / "compiled" / f"t{n}", tmp_path / "eager" / f"t{n}") for n in MIXED}
    check(f"{DEVICE} bfloat16 compiled ({graphs} graphs) vs eager", diffs, BF16)


def test_auto_compiled_loss_pack_equals_eager_pack_on_cuda(data, tiny_model, tmp_path):
    """`compile: auto` on trials too short to compile the layers: eager layers and the loss chunk
    compiled. It trains the three mixed trials (dropout included: the layers draw eager masks) as the
    all-eager pack does, within bf16."""
    from tunepilot.engines.packed.loss import ce_chunk

    torch._dynamo.reset()
    probe = PackedEngine(
        make_config(tiny_model), 1, model=load(tiny_model, "bfloat16"), pad_id=0, data=data, compile="auto"
    )
    assert not probe.compiled and probe.pack.chunk_fn is not ce_chunk  # what auto chose for these trials
    probe.close()
    run(load(tiny_model, "bfloat16"), data, tiny_model, tmp_path / "auto", MIXED, compile="auto")
    run(load(tiny_model, "bfloat16"), data, tiny_model, tmp_path / "eager", MIXED)
    diffs = {n: differences(tmp_path / "auto" / f"t{n}", tmp_path / "eager" / f"t{n}") for n in MIXED}
    check(f"{DEVICE} bfloat16 compiled loss chunk (compile: auto) vs eager", diffs, BF16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_pack_matches_cpu_fp32_pack(dtype, data, tiny_model, tmp_path, fp32):
    """The pack on the GPU gives the CPU fp32 pack's first steps (loss and grad norm, step 1's loss
    included). Dropout-free trials: CPU and CUDA generators draw different dropout masks."""
    run(load(tiny_model, "float32", "cpu"), data, tiny_model, tmp_path / "cpu", NO_DROPOUT)
    run(load(tiny_model, dtype), data, tiny_model, tmp_path / "gpu", NO_DROPOUT)
    for steps in (1, FIRST_STEPS):  # step 1: the base model and fresh adapters, before any update
        diffs = {n: differences(tmp_path / "gpu" / f"t{n}", tmp_path / "cpu" / f"t{n}", steps) for n in NO_DROPOUT}
        check(f"{DEVICE} {dtype} vs cpu float32, first {steps} step(s)", diffs, TOLERANCE[dtype])
