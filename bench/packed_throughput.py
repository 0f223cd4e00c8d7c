"""Packed-engine throughput against transformers Trainer + PEFT, measured side by side in one run.

    python bench/packed_throughput.py --archs qwen2.5-0.5b llama-3.2-1b --ks 1 4 8 16 --out results.json

Per trial: LoRA r=16 (alpha 32, dropout 0) on all linear layers, micro-batch 4, sequence 1,024,
bf16 base weights, AdamW, random-weight models built from the published configs below. For each
architecture the baseline is one trial in `transformers.Trainer` + PEFT; the packed engine trains K
such trials at once. Reported: aggregate trained tokens/s, model-FLOPs utilisation, peak memory.

Model FLOPs per trained token, LoRA with a frozen base (stated, not measured):
    4 * N_mm                    forward 2 N_mm + backward activation-gradients 2 N_mm; the frozen
                                base gets no weight gradients (that would be the third 2 N_mm of 6N)
  + 12 * L * d_attn * T         attention scores and values: forward 4 L d T per token (full T x T,
                                no causal discount, as in PaLM's 6N + 12 L H Q T), backward 2x forward
  + 6 * N_lora                  the adapters train fully: forward, input- and weight-gradients
N_mm counts every matmul weight once (all linear layers and lm_head; a tied embedding counts once, as
lm_head). Recomputation (activation checkpointing, the chunked loss) is not counted: MFU is model
FLOPs over peak. Peak is the dense bf16 datasheet figure, 989 TFLOP/s for H100 SXM and H200.
`--smoke` runs tiny shapes on CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tunepilot.config import build_config  # noqa: E402
from tunepilot.engines.base import Outcome, TrialSpec  # noqa: E402
from tunepilot.engines.packed import PackedEngine  # noqa: E402
from tunepilot.engines.packed import memory as pmem  # noqa: E402

# Published config.json values (Hugging Face Qwen/Qwen2.5-0.5B, meta-llama/Llama-3.2-1B, SmolLM2-135M).
ARCHS = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        use_sliding_window=False,
    ),
    "llama-3.2-1b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
        mlp_bias=False,
        attention_bias=False,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct: the LoRA corpus's model (bench/lora_corpus.py)
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
    ),
    "tiny": dict(
        model_type="llama",
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
}
# the Qwen2.5 family's code paths (attention bias, the qwen2 tokenizer mapping) at CPU size
ARCHS["tiny-qwen2"] = {**ARCHS["tiny"], "model_type": "qwen2", "use_sliding_window": False}
PEAK_BF16 = 989e12
RANK, ALPHA = 16, 32


def build_model(arch: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(ARCHS[arch])
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def flops_per_token(model, seq: int, lora_params: int) -> float:
    c = model.config
    seen, n_mm = set(), 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n_mm += m.weight.numel()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    d_attn = c.num_attention_heads * head_dim
    return 4 * n_mm + 12 * c.num_hidden_layers * d_attn * seq + 6 * lora_params


def lora_param_count(model) -> int:
    head = model.get_output_embeddings()
    return sum(
        RANK * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )


def random_examples(n: int, seq: int, vocab: int, seed: int, low: int = 0) -> list[dict]:
    """n sequences of seq token ids drawn uniformly from [low, vocab)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(low, vocab) for _ in range(seq)]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def trainer_args(**kwargs):
    """TrainingArguments with the keys this transformers accepts (5.x dropped some, e.g. warmup_ratio)."""
    from transformers import TrainingArguments

    accepted = set(inspect.signature(TrainingArguments.__init__).parameters)
    dropped = sorted(set(kwargs) - accepted)
    if dropped:
        print(f"  TrainingArguments: not accepted here, left out: {dropped}", flush=True)
    return TrainingArguments(**{k: v for k, v in kwargs.items() if k in accepted})


def run_baseline(arch: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    """One trial in transformers Trainer + PEFT: tokens/s over the timed steps after warm-up."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback

    _reset_peak(device)
    base = build_model(arch, device, dtype)
    fpt = flops_per_token(base, args.seq, lora_param_count(base))  # before PEFT adds its LoRA Linear modules
    model = get_peft_model(
        base,
        LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    data = [
        {k: torch.tensor(v) for k, v in e.items()}
        for e in random_examples(args.micro * (args.warmup + args.baseline_steps), args.seq, model.config.vocab_size, 0)
    ]
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            _sync(device)
            marks.append(time.perf_counter())

    targs = trainer_args(
        output_dir=str(Path(args.workdir) / f"trainer-{arch}"),
        per_device_train_batch_size=args.micro,
        max_steps=args.warmup + args.baseline_steps,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        bf16=dtype == torch.bfloat16,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=[Clock()])
    trainer.train()
    seconds = marks[-1] - marks[args.warmup - 1]
    tokens = args.baseline_steps * args.micro * (args.seq - 1)  # trained (shifted) tokens, as for the packed runs
    result = {
        "engine": "trainer+peft",
        "arch": arch,
        "k": 1,
        "tokens_per_s": tokens / seconds,
        "mfu": tokens / seconds * fpt / PEAK_BF16,
        "peak_gib": _peak_gib(device),
        "checkpointing": False,
    }
    del trainer, model
    return result


def run_packed(
    arch: str,
    k: int,
    args,
    device: torch.device,
    dtype: torch.dtype,
    compiled: bool | str = False,
    profiled: bool = False,
    fuse_norms: bool | None = None,
) -> dict:
    """K trials in the packed engine: tokens/s over the timed packed steps after warm-up (which
    includes the compilation when `compiled`)."""
    _reset_peak(device)
    model = build_model(arch, device, dtype)
    fpt = flops_per_token(model, args.seq, lora_param_count(model))
    vocab = model.config.vocab_size
    train = random_examples(max(64, args.micro * 8), args.seq, vocab, 1)
    total = args.warmup + args.steps
    raw = {
        "model_name_or_path": f"random-{arch}",
        "dataset": "synthetic",
        "cutoff_len": args.seq,
        "per_device_train_batch_size": args.micro,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "lora_target": "all-linear",
        "max_steps": total,
        "learning_rate": 1e-4,
        "warmup_steps": 1,
        "load_best_model_at_end": False,  # the Trainer baseline keeps no best state either
    }
    base = build_config(raw, check_paths=False)[0]
    shape = pmem.Shape.of(model)
    per_trial = pmem.trial_bytes(shape, lora_param_count(model), args.micro, args.seq, False)
    budget = pmem.memory_budget(device)
    checkpointing = budget is not None and k * per_trial + pmem.shared_bytes(shape, 2048) > budget
    checkpointing = checkpointing and not (compiled and args.compiled_no_checkpointing)
    if checkpointing:  # K trials' activations would not fit: recompute them instead
        per_trial = pmem.trial_bytes(shape, lora_param_count(model), args.micro, args.seq, True)
        base = build_config({**raw, "gradient_checkpointing": True}, check_paths=False)[0]
    mode = (compiled if isinstance(compiled, str) else args.compile_mode[0]) if compiled else False
    engine = PackedEngine(
        # one eval example: the engine judges trials by eval loss (none: refused), at a negligible cost
        base,
        k,
        model=model,
        pad_id=0,
        data=lambda cfg: (train, train[:1]),
        compile=mode,
        fuse_norms=fuse_norms,
    )
    for i in range(k):
        params = {"learning_rate": 1e-4 * (1 + i), "seed": i}
        cfg = build_config({**raw, **params, "gradient_checkpointing": checkpointing}, check_paths=False)[0]
        engine.start(TrialSpec(i, params, cfg, report_fractions=(args.warmup / total, 1.0)))
    t_warm = time.perf_counter()
    engine.advance()  # the warm-up steps (allocator, cuBLAS heuristics, compilation)
    _sync(device)
    warmup_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    with _profiler(args.profile or profiled) as prof, _sync_debug(profiled and args.sync_debug, device):
        outcomes = engine.advance()
        _sync(device)
    seconds = time.perf_counter() - t0
    if prof is not None:
        _print_profile(prof, seconds)
    outcomes = [o for o in outcomes if isinstance(o, Outcome)]  # each trial's last Report comes first
    assert len(outcomes) == k and all(o.state == "complete" for o in outcomes), outcomes
    tokens = k * args.steps * args.micro * (args.seq - 1)  # trained (shifted) tokens
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    est = weights + pmem.shared_bytes(shape, 2048) + k * per_trial  # what the engine's fit check assumes
    result = {
        "engine": _engine_name(bool(compiled), mode, prof is not None) + (" (unfused norms)" * (fuse_norms is False)),
        "arch": arch,
        "k": k,
        "warmup_s": warmup_s,
        "tokens_per_s": tokens / seconds,
        "mfu": tokens / seconds * fpt / PEAK_BF16,
        "peak_gib": _peak_gib(device),
        "estimate_gib": est / 2**30,
        "checkpointing": checkpointing,
    }
    engine.close()
    del engine, model
    return result


def _engine_name(compiled: bool, mode: str, profiled: bool) -> str:
    name = "packed"
    if compiled:
        name += "+compile" if mode == "default" else f"+compile {mode}"
    return name + (" (profiled)" if profiled else "")


def count_host_ops(arch: str, k: int, args) -> dict:
    """Aten ops dispatched by one packed forward + backward, counted on the meta device (no GPU).

    Every dispatched op costs host time in eager mode (10-20 us each with autograd), so this count
    bounds how fast a step can be issued however fast the GPU is. The decoder alone (as counted
    before the loss changes) and the whole step (decoder, chunked loss, backward of the objective)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tunepilot.engines.packed.inject import add_adapters
    from tunepilot.engines.packed.pack import Pack

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            if func is torch.ops.aten._local_scalar_dense.default:  # .item(): meta has no value
                return True if args[0].dtype == torch.bool else 0  # (transformers' packed-sequence check)
            if func is torch.ops.aten.nonzero.default:  # data-dependent size: as if every entry were set
                x = args[0]
                return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
            return func(*args, **(kwargs or {}))

    model = build_model(arch, torch.device("meta"), torch.bfloat16)
    pack = Pack(model, pad_id=0, chunk_rows=2048)
    for slot in range(k):
        add_adapters(pack.wrapped, list(pack.wrapped), slot, RANK, ALPHA, False, 0.0, seed=slot)
    micro = {s: random_examples(args.micro, args.seq, model.config.vocab_size, s) for s in range(k)}
    inputs, segments = pack.batch(micro)
    pack.context.segments, pack.context.training = segments, True
    with Count() as decoder:
        hidden = pack.decoder(input_ids=inputs["input_ids"], use_cache=False).last_hidden_state
        hidden.float().sum().backward()
    step = Count()
    try:
        with step:
            losses = pack.losses(micro, training=True)
            sum(total / max(1, n) for total, n in losses.values()).backward()
    except (RuntimeError, NotImplementedError) as e:  # a host sync (nonzero, item) cannot run on meta tensors
        print(f"  step not countable on meta: {str(e)[:80]}", flush=True)
        step.n = None
    return {"arch": arch, "k": k, "decoder_ops": decoder.n, "step_ops": step.n}


@contextlib.contextmanager
def _sync_debug(enabled: bool, device: torch.device):
    """Count the host-device synchronisations of the timed steps by Python source line (CUDA only)."""
    if not enabled or device.type != "cuda":
        yield
        return
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where: dict[str, int] = {}
    for w in caught:
        key = f"{Path(w.filename).name}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    print(f"  host syncs in the timed steps: {sum(where.values())}", flush=True)
    for key, n in sorted(where.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {n:6d}  {key}", flush=True)


@contextlib.contextmanager
def _profiler(enabled: bool):
    if not enabled:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        yield prof


def _print_profile(prof, seconds: float) -> None:
    """Where the timed steps went: top operators by device time and by host time, and GPU busy share."""
    events = prof.key_averages()
    # kernels only: an aten op's row also carries its kernels' device time (counted twice otherwise)
    device_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(
        f"  profile: wall {seconds:.3f} s, device kernels {device_us / 1e6:.3f} s "
        f"({100 * device_us / 1e6 / seconds:.0f}% busy)"
    )
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


def table(results: list[dict]) -> str:
    lines = [
        "| arch | engine | K | tokens/s | vs baseline | MFU | peak GiB | act. ckpt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r["arch"]: r["tokens_per_s"] for r in results if r["engine"] == "trainer+peft"}
    for r in results:
        ratio = r["tokens_per_s"] / base[r["arch"]] if r["arch"] in base else float("nan")
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        lines.append(
            f"| {r['arch']} | {r['engine']} | {r['k']} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | "
            f"{100 * r['mfu']:.1f}% | {peak} | {'yes' if r['checkpointing'] else 'no'} |"
        )
    return "\n".join(lines)


def environment() -> dict:
    # The device's copy of the tree may carry a stale .git: a commit passed in wins.
    commit = (
        os.environ.get("BENCH_COMMIT")
        or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import peft
    import transformers

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "commit": commit or None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["qwen2.5-0.5b", "llama-3.2-1b"])
    p.add_argument("--ks", nargs="*", type=int, default=[1, 4, 8, 16])
    p.add_argument("--no-baseline", action="store_true", help="packed runs only (profiling)")
    p.add_argument(
        "--profile-ks",
        nargs="*",
        type=int,
        default=[],
        help="extra eager runs of these K under torch.profiler (timed rows stay unprofiled)",
    )
    p.add_argument("--profile-compiled", action="store_true", help="the --profile-ks runs are compiled")
    p.add_argument(
        "--sync-debug",
        action="store_true",
        help="the --profile-ks runs also count host syncs by source line (torch sync debug mode)",
    )
    p.add_argument(
        "--compile-ks",
        nargs="*",
        type=int,
        default=[],
        help="also run these K with torch.compile'd decoder layers and loss chunk",
    )
    p.add_argument(
        "--unfused-norms-ks",
        nargs="*",
        type=int,
        default=[],
        help="also run these K eager with transformers' own RMSNorm (measures the fused norms)",
    )
    p.add_argument(
        "--compile-mode",
        nargs="+",
        default=["default"],
        help="torch.compile mode(s) of the compiled runs' decoder layers: one run per mode and K",
    )
    p.add_argument(
        "--compiled-no-checkpointing",
        action="store_true",
        help="compiled runs never recompute activations (the fit estimate is eager's; an OOM is reported)",
    )
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed packed steps")
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=30,
        help="timed Trainer steps (more than packed: each is short, and the baseline is the noisy side)",
    )
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--workdir", default="/tmp/packed-bench")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of the timed packed steps")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    p.add_argument(
        "--count-ops", action="store_true", help="count aten ops per packed step on the meta device (no GPU, no timing)"
    )
    args = p.parse_args()
    if args.count_ops:
        for arch in args.archs:
            for k in args.ks:
                print(json.dumps(count_host_ops(arch, k, args)), flush=True)
        return
    if args.smoke:
        args.archs, args.ks, args.seq, args.micro, args.warmup, args.steps = ["tiny"], [1, 2], 32, 2, 1, 2
        args.baseline_steps = 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.compile_ks:  # one code object (the decoder layer) gets a graph per K and per arch
        torch._dynamo.config.recompile_limit = 64
    env, results = environment(), []
    print(json.dumps(env), flush=True)
    for arch in args.archs:
        runs = [(lambda a=arch: run_baseline(a, args, device, dtype), "baseline")] * (not args.no_baseline)
        runs += [(lambda a=arch, k=k: run_packed(a, k, args, device, dtype), f"K={k}") for k in args.ks]
        runs += [
            (lambda a=arch, k=k: run_packed(a, k, args, device, dtype, fuse_norms=False), f"K={k} unfused norms")
            for k in args.unfused_norms_ks
        ]
        runs += [
            (
                lambda a=arch, k=k: run_packed(
                    a, k, args, device, dtype, compiled=args.profile_compiled, profiled=True
                ),
                f"K={k} profiled",
            )
            for k in args.profile_ks
        ]
        runs += [
            (lambda a=arch, k=k, m=m: run_packed(a, k, args, device, dtype, compiled=m), f"K={k} compiled {m}")
            for k in args.compile_ks
            for m in args.compile_mode
        ]
        for fn, name in runs:
            try:
                results.append(fn())
                print(f"{arch} {name}: {json.dumps(results[-1])}", flush=True)
            except torch.OutOfMemoryError as e:
                print(f"{arch} {name}: out of memory ({str(e)[:120]})", flush=True)
            except Exception as e:  # noqa: BLE001  (a failed variant, e.g. compilation, must not end the run)
                print(f"{arch} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if __name__ == "__main__":
    main()
