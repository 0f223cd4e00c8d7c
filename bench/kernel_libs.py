"""Kernel libraries against the packed engine's own implementations, op by op, on one GPU.

    pip install --no-index --no-deps --target /tmp/site .whlk/*.whl
    PYTHONPATH=/tmp/site:$PWD/src:$PWD python bench/kernel_libs.py --out kernel_libs.json
    PYTHONPATH=/tmp/site:$PWD/src:$PWD python bench/kernel_libs.py --shapes qwen2.5-0.5b --ops ce
    python bench/kernel_libs.py --smoke --out /tmp/kernel_libs.json   # CPU, tiny, project rows only (seconds)

The engine's hot spots, each timed forward + backward (median of --reps after --warmup; CUDA events),
with the peak of allocated memory above what was allocated before the step, and the largest
difference of the value and of the input gradients from a reference:

  ce       lm_head + cross-entropy with a frozen head ([V, d]); only d loss / d hidden is needed.
           Reference values: `F.cross_entropy(F.linear(h, W).float(), y)` with autograd, row chunk by
           row chunk (the same math; it always fits); the row "reference (full logits)" is that
           expression on all rows at once. The loss is per segment (a pack's trials: `--segments`
           contiguous blocks of rows) where the implementation can give it, else one sum.
  rmsnorm  RMSNorm of [N, d] with a frozen weight (the base model is frozen): d / d x only.
  swiglu   `F.silu(gate) * up` of [N, intermediate], the part of LlamaMLP between its projections.

Inputs are random: h ~ N(0, 1), targets uniform, and W scaled so that logits have std --logit-std.
The default 5 gives a softmax entropy of ~3 nats and a top probability of ~0.36 over these
vocabularies (measured on such draws; assumed to be of the order of a trained model's). It matters:
cut-cross-entropy's gradient filter skips vocabulary blocks whose probabilities are all small, so
flat random logits (std ~1) would flatter it.
Relative differences are max |x - ref| / max |ref|. Libraries are imported lazily: a missing one (or
no CUDA) is a skipped row, an error in one variant (OOM, triton) a failed row; the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_throughput import environment  # noqa: E402

from tunepilot.engines.packed.loss import ce_chunk, ce_chunk_fused, chunked_ce_sums  # noqa: E402
from tunepilot.engines.packed.norms import FusedRMSNorm  # noqa: E402

# Published config.json values (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen2.5-0.5B, meta-llama/Llama-3.2-1B);
# rows: tokens of one packed step (e.g. 8 trials x micro-batch 4 x 1,024 = 32,768).
SHAPES = {
    "smollm2": dict(d=576, vocab=49152, inter=1536, eps=1e-5, rows=16384),
    "qwen2.5-0.5b": dict(d=896, vocab=151936, inter=4864, eps=1e-6, rows=32768),
    "llama-3.2-1b": dict(d=2048, vocab=128256, inter=8192, eps=1e-5, rows=32768),
    "tiny": dict(d=32, vocab=512, inter=64, eps=1e-5, rows=300),  # --smoke: 300 rows, not whole chunks
}
LIBRARIES = ("triton", "liger-kernel", "cut-cross-entropy")
# each op's speed-up column is against the engine's current form
BASELINE = {"ce": "project eager", "rmsnorm": "project FusedRMSNorm", "swiglu": "transformers silu*up"}


@dataclass
class Case:
    """One op at one shape: fixed tensors (`ctx`), fresh differentiable inputs per step (`prepare`:
    inputs, upstream gradient or None for ones), and the reference (value, input gradients)."""

    op: str
    shape: str
    ctx: dict
    prepare: Callable[[], tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]
    ref: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    source: str  # who provides it: reference, project, transformers, torch, liger-kernel, cut-cross-entropy
    build: Callable[[dict], Callable]  # imports lazily; the forward function of the inputs
    note: str = ""
    # a GPU row, skipped off CUDA: the libraries' (triton), and inductor's (on CPU its compile only costs time)
    gpu_only: bool = field(default=False)


def gpu(name: str, source: str, build: Callable[[dict], Callable], note: str) -> Variant:
    return Variant(name, source, build, note, gpu_only=True)


# ---- cross-entropy ----------------------------------------------------------------------------------


def ce_case(shape: str, args, device: torch.device, dtype: torch.dtype) -> Case:
    s = SHAPES[shape]
    n, d, v = s["rows"], s["d"], s["vocab"]
    gen = torch.Generator(device).manual_seed(args.seed)
    h = torch.randn(n, d, generator=gen, device=device).to(dtype)
    w = (torch.randn(v, d, generator=gen, device=device) * (args.logit_std / d**0.5)).to(dtype)
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    owner = torch.arange(n, device=device) * args.segments // n  # contiguous blocks, as a pack's trials
    ctx = dict(w=w, y=y, owner=owner, segments=args.segments, chunk_rows=args.chunk_rows, rows=n, d=d, vocab=v)
    ctx["backend"] = args.compile_backend
    case = Case("ce", shape, ctx, lambda: ((h.detach().requires_grad_(),), None))
    case.ref = ce_reference_values(h, ctx)
    return case


def ce_reference_values(h: torch.Tensor, c: dict) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
    """Per-segment loss sums and d (their sum) / d h of the plain expression, by autograd, a row chunk
    at a time (rows are independent: the same values as all rows at once)."""
    totals = torch.zeros(c["segments"], dtype=torch.float32, device=h.device)
    grad = torch.empty_like(h)
    for start in range(0, h.shape[0], c["chunk_rows"]):
        rows = slice(start, start + c["chunk_rows"])
        hc = h[rows].detach().requires_grad_()
        losses = F.cross_entropy(F.linear(hc, c["w"]).float(), c["y"][rows], reduction="none")
        totals.index_add_(0, c["owner"][rows], losses.detach())
        (grad[rows],) = torch.autograd.grad(losses.sum(), hc)
    return totals, (grad,)


def per_segment(losses: torch.Tensor, c: dict) -> torch.Tensor:
    """Token losses [N] to per-segment sums [segments] (differentiable)."""
    return losses.new_zeros(c["segments"], dtype=torch.float32).index_add(0, c["owner"], losses.float())


def frozen_head(w: torch.Tensor) -> nn.Linear:
    head = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    head.weight = nn.Parameter(w, requires_grad=False)
    return head


def project_ce(compiled: bool) -> Callable[[dict], Callable]:
    """`chunked_ce_sums` as `Pack.losses` calls it (eager `ce_chunk`, or `Pack._compile`'s chunk function)."""

    def build(c):
        head = frozen_head(c["w"])
        chunk_fn = torch.compile(ce_chunk_fused, dynamic=False, backend=c["backend"]) if compiled else ce_chunk
        return lambda h: chunked_ce_sums(
            h, c["y"], c["owner"], c["segments"], head, c["chunk_rows"], chunk_fn, fixed=compiled
        )

    return build


def full_reference(c):
    return lambda h: F.cross_entropy(F.linear(h, c["w"]).float(), c["y"], reduction="sum")


def liger_ce(reduction: str, tuned_chunks: bool = False) -> Callable[[dict], Callable]:
    def build(c):
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        # liger's chunk: next_pow2(N / ceil(V / (const * d))) rows; const 1 (its default) bounds the
        # transient logits to ~N x d. The tuned const gives ~chunk_rows rows, the project's budget.
        const = -(-c["vocab"] * c["chunk_rows"] // (c["rows"] * c["d"])) if tuned_chunks else 1

        def forward(h):
            loss = liger_fused_linear_cross_entropy(h, c["w"], c["y"], reduction=reduction, chunk_mem_const=const)
            return per_segment(loss, c) if reduction == "none" else loss

        return forward

    return build


def cce(reduction: str, filter_eps: str | None = "high") -> Callable[[dict], Callable]:
    def build(c):
        from cut_cross_entropy import linear_cross_entropy

        def forward(h):
            loss = linear_cross_entropy(h, c["w"], c["y"], reduction=reduction, filter_eps=filter_eps)
            return per_segment(loss, c) if reduction == "none" else loss

        return forward

    return build


SCALAR, SEGMENTS = "one scalar sum, no per-segment (per-trial) sums", "per-segment sums"
CE_VARIANTS = [
    Variant("reference (full logits)", "reference", full_reference, SCALAR + "; all [N, V] logits, then fp32"),
    Variant("project eager", "project", project_ce(False), f"chunked_ce_sums with ce_chunk; {SEGMENTS}"),
    Variant("project compiled", "project", project_ce(True), f"compiled ce_chunk_fused, fixed=True; {SEGMENTS}"),
    gpu("liger sum", "liger-kernel", liger_ce("sum"), SCALAR + "; chunk_mem_const=1 (its default)"),
    gpu("liger sum, chunk~chunk_rows", "liger-kernel", liger_ce("sum", True), SCALAR + "; chunk_mem_const raised"),
    gpu("liger none + index_add", "liger-kernel", liger_ce("none"), SEGMENTS + "; none: gradient in backward"),
    gpu("cce sum", "cut-cross-entropy", cce("sum"), SCALAR + "; filter_eps='high' (gradient filter)"),
    gpu("cce sum exact", "cut-cross-entropy", cce("sum", None), SCALAR + "; filter_eps=None (no filter)"),
    gpu("cce none + index_add", "cut-cross-entropy", cce("none"), SEGMENTS + "; filter_eps='high'"),
]


# ---- RMSNorm and SiLU x up ----------------------------------------------------------------------------


def norm_case(shape: str, args, device: torch.device, dtype: torch.dtype) -> Case:
    s = SHAPES[shape]
    gen = torch.Generator(device).manual_seed(args.seed)
    x = torch.randn(s["rows"], s["d"], generator=gen, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(s["d"], generator=gen, device=device)).to(dtype)
    g = torch.randn(s["rows"], s["d"], generator=gen, device=device).to(dtype)
    # fresh copies each step: liger's in-place backward writes d x into the upstream gradient
    return Case("rmsnorm", shape, dict(weight=weight, eps=s["eps"]), lambda: ((x.clone().requires_grad_(),), g.clone()))


def with_frozen_weight(module: nn.Module, c: dict) -> nn.Module:
    module.weight = nn.Parameter(c["weight"], requires_grad=False)
    return module


def llama_norm(c):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return with_frozen_weight(LlamaRMSNorm(c["weight"].shape[0], eps=c["eps"]), c)


def liger_norm(c):
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    return with_frozen_weight(LigerRMSNorm(c["weight"].shape[0], eps=c["eps"], casting_mode="llama"), c)


INDUCTOR = "torch.compile, as the compiled engine's decoder layers"
NORM_VARIANTS = [
    Variant("transformers LlamaRMSNorm", "transformers", llama_norm, "the reference; eager, fp32 upcast"),
    Variant("project FusedRMSNorm", "project", lambda c: FusedRMSNorm(c["weight"], c["eps"]), "F.rms_norm"),
    gpu("compiled LlamaRMSNorm", "torch", lambda c: torch.compile(llama_norm(c), dynamic=False), INDUCTOR),
    gpu("liger LigerRMSNorm", "liger-kernel", liger_norm, "casting_mode='llama', in_place=True: d x into d y"),
]


def swiglu_case(shape: str, args, device: torch.device, dtype: torch.dtype) -> Case:
    s = SHAPES[shape]
    gen = torch.Generator(device).manual_seed(args.seed)
    gate, up, g = (torch.randn(s["rows"], s["inter"], generator=gen, device=device).to(dtype) for _ in range(3))
    # fresh copies each step: liger's backward writes the gradients into its saved gate and up
    return Case("swiglu", shape, {}, lambda: ((gate.clone().requires_grad_(), up.clone().requires_grad_()), g.clone()))


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def liger_silu_mul(c):
    from liger_kernel.ops import LigerSiLUMulFunction

    return LigerSiLUMulFunction.apply


SWIGLU_VARIANTS = [
    Variant("transformers silu*up", "transformers", lambda c: silu_mul, "the reference; LlamaMLP's eager form"),
    gpu("compiled silu*up", "torch", lambda c: torch.compile(silu_mul, dynamic=False), INDUCTOR),
    gpu("liger LigerSiLUMulFunction", "liger-kernel", liger_silu_mul, "backward writes d gate, d up into gate, up"),
]

OPS = {
    "ce": (ce_case, CE_VARIANTS),
    "rmsnorm": (norm_case, NORM_VARIANTS),
    "swiglu": (swiglu_case, SWIGLU_VARIANTS),
}


# ---- measuring -----------------------------------------------------------------------------------------


def step(fn: Callable, inputs: tuple, upstream: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
    """Forward and backward: the value and d value / d inputs (upstream gradient: given, or ones)."""
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs, upstream if upstream is not None else torch.ones_like(value))
    return value, grads


def differences(value: torch.Tensor, grads: tuple, ref: tuple) -> dict:
    ref_value, ref_grads = ref
    if value.dim() == 0 and ref_value.dim() > 0:  # a scalar sum against per-segment sums
        ref_value = ref_value.sum()
    out = {}
    for key, got, want in (("value", [value], [ref_value]), ("grad", grads, ref_grads)):
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want, strict=True))
        scale = max(b.float().abs().max().item() for b in want)
        out[f"{key}_max_abs_diff"], out[f"{key}_max_rel_diff"] = diff, diff / scale if scale else diff
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable, case: Case, device: torch.device, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        inputs, upstream = case.prepare()
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = step(fn, inputs, upstream)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = step(fn, inputs, upstream)
            times.append(1e3 * (time.perf_counter() - t0))
        del out, inputs, upstream
    return times


def peak_gib(fn: Callable, case: Case, device: torch.device) -> float | None:
    """Peak allocated memory of one step above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    inputs, upstream = case.prepare()
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = step(fn, inputs, upstream)
    _sync(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def measure(v: Variant, case: Case, args, device: torch.device) -> dict:
    fn = v.build(case.ctx)
    t0 = time.perf_counter()
    value, grads = step(fn, *case.prepare())  # also the first warm-up (compilation, autotuning)
    _sync(device)
    row = {"first_call_s": time.perf_counter() - t0}
    if case.op == "ce":
        row["per_segment"] = value.dim() > 0
    row.update(differences(value, grads, case.ref))
    del value, grads
    timed_ms(fn, case, device, args.warmup)
    times = timed_ms(fn, case, device, args.reps)
    row.update(ms=statistics.median(times), ms_min=min(times), peak_gib=peak_gib(fn, case, device))
    return row


def skip_reason(v: Variant, case: Case, device: torch.device) -> str | None:
    """Why a GPU variant cannot run here (a library's import fails, or no CUDA); None: it can."""
    if not v.gpu_only:
        return None
    try:
        if v.source in LIBRARIES:
            v.build(case.ctx)  # the lazy import
    except ImportError as e:
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None if device.type == "cuda" else f"needs CUDA (device: {device.type})"


def run_variant(v: Variant, case: Case, args, device: torch.device) -> dict:
    row = {"op": case.op, "shape": case.shape, "impl": v.name, "source": v.source, "note": v.note}
    try:
        reason = skip_reason(v, case, device)
        if reason:
            row.update(status="skipped", reason=reason)
        else:
            row.update(measure(v, case, args, device), status="ok")
    except torch.OutOfMemoryError as e:
        row.update(status="failed", reason=f"out of memory: {str(e)[:160]}")
    except Exception as e:  # noqa: BLE001  (a failed variant, e.g. a triton error, must not end the run)
        row.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:300]}")
    free(device)  # what the variant left (compiled graphs, an OOM's tensors)
    return row


def run_op(op: str, shape: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Every variant of one op at one shape, a row each (printed as it comes)."""
    make_case, variants = OPS[op]
    failure = None
    try:
        case = make_case(shape, args, device, dtype)
        if case.ref is None:  # the first variant is the reference
            value, grads = step(variants[0].build(case.ctx), *case.prepare())
            case.ref = value.detach(), grads
            del value
    except Exception as e:  # noqa: BLE001  (e.g. out of memory for the inputs: the other ops still run)
        failure = f"{type(e).__name__}: {str(e)[:300]}"
    if failure:
        free(device)
        row = {"op": op, "shape": shape, "impl": "(inputs, reference)", "source": "-", "note": ""}
        row.update(status="failed", reason=failure)
        print(json.dumps(row), flush=True)
        return [row]
    rows = []
    for v in variants:
        rows.append(run_variant(v, case, args, device))
        print(json.dumps(rows[-1]), flush=True)
    del case
    free(device)
    return rows


def free(device: torch.device) -> None:
    if device.type == "cuda":  # (on CPU the collection only costs time: ~0.2 s a call)
        gc.collect()
        torch.cuda.empty_cache()


# ---- reporting and the command line --------------------------------------------------------------------


def _num(x: float | None, fmt: str, unit: str = "") -> str:
    return "-" if x is None else format(x, fmt) + unit


def table(rows: list[dict]) -> str:
    lines = [
        "| op | shape | impl | ms | x baseline | peak GiB | value rel diff | grad rel diff | first call s | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["op"], r["shape"]): r["ms"] for r in rows if r.get("ms") and r["impl"] == BASELINE[r["op"]]}
    for r in rows:
        ratio = base[(r["op"], r["shape"])] / r["ms"] if r.get("ms") and (r["op"], r["shape"]) in base else None
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason'][:60]}"
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['impl']} | {_num(r.get('ms'), '.2f')} | {_num(ratio, '.2f', 'x')} | "
            f"{_num(r.get('peak_gib'), '.2f')} | {_num(r.get('value_max_rel_diff'), '.1e')} | "
            f"{_num(r.get('grad_max_rel_diff'), '.1e')} | {_num(r.get('first_call_s'), '.1f')} | {status} |"
        )
    notes = dict.fromkeys(f"- {r['impl']}: {r['note']}" for r in rows if r["note"])
    legend = ", ".join(f"{op}: {impl}" for op, impl in BASELINE.items())
    return "\n".join([*lines, "", f"x baseline: the baseline row's ms / this row's ms ({legend}).", *notes])


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["smollm2", "qwen2.5-0.5b", "llama-3.2-1b"])
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    p.add_argument("--chunk-rows", type=int, default=2048, help="the project's loss chunk (PackedEngine's default)")
    p.add_argument("--segments", type=int, default=8, help="trials in the pack: per-segment loss sums")
    p.add_argument("--logit-std", type=float, default=5.0, help="std of the random logits (softmax peakiness)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (checked) one")
    p.add_argument("--reps", type=int, default=10, help="timed steps: their median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the environment and rows as JSON here")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled loss row")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU in fp32 (checks the script)")
    args = p.parse_args(argv)
    if args.smoke:
        args.shapes, args.chunk_rows, args.segments, args.warmup, args.reps = ["tiny"], 64, 4, 1, 2
        args.compile_backend = "aot_eager"  # the same graph without inductor's C++ build (~10 s cold on CPU)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # fp32 on CPU: tight agreement
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)  # a graph per shape
    env = {**environment(), "libraries": library_versions(), "dtype": str(dtype).removeprefix("torch.")}
    print(json.dumps(env), flush=True)
    rows = []
    for shape in args.shapes:
        for op in args.ops:
            rows += run_op(op, shape, args, device, dtype)
    print(table(rows))
    shapes = {s: SHAPES[s] for s in args.shapes}
    result = {"environment": env, "shapes": shapes, "settings": vars(args), "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
