"""Peak training memory per GPU, from architecture facts alone, and what to change when it does not fit.

    total = weights + adapters + gradients + optimizer states + activations + logits + overhead

Where the numbers come from (bytes; H hidden, I intermediate, KV = kv heads x head_dim, V vocab):

- weights: parameters x dtype bytes (bf16/fp16 2, fp32 4). 4-bit (QLoRA, bitsandbytes NF4) applies to
  the decoder's linear weights only: 0.5 byte each plus ~0.127 bit of double-quantized block constants
  (Dettmers et al. 2023, QLoRA, sec. 3); embeddings, norms and the head stay in 16 bit.
- LoRA adapters: r x (in + out) per adapted module. PEFT keeps adapter weights in fp32 by default
  (`autocast_adapter_dtype=True`), so weights 4 + grads 4 + AdamW moments 8 = 16 bytes per parameter.
- full fine-tuning: gradients and the two AdamW moments in the weights' dtype (torch AdamW keeps
  states like its parameters): weights + 3 x weights.
- activations per token per decoder layer: counted by summing the tensors autograd saves (a
  `saved_tensors_hooks` count on a bf16 Llama layer with SDPA attention; see bench/memory_estimate.py):
  frozen base 8H + 6I + 4KV, plus 4 x in_features per LoRA-adapted module (PEFT casts the input to
  the fp32 adapter dtype and keeps that copy for the A gradient); full fine-tuning 16H + 8I + 4KV.
  No s x s attention matrix: SDPA flash/memory-efficient kernels keep only their outputs.
  With gradient checkpointing a layer keeps only its bf16 input (2H) and one layer is recomputed.
- logits: bf16 logits (2V per token), the shifted copy (2V), its fp32 upcast (4V) and the saved
  log-softmax (4V), then the backward's fp32 gradient: `logits_bytes_per_vocab` x V per token. 12
  counts the forward side only and read 5-9% low against H100 peaks; 14 is the calibrated value
  (bench/BENCHMARKS.md, "memory estimate").
- overhead: CUDA context, cuBLAS workspace and allocator slack, a constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunepilot.modelinfo import ModelInfo, resolve_targets

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "auto": 2}


class MemorySettings(BaseModel):
    """Coefficients of the estimate; measured values are recorded in bench/BENCHMARKS.md."""

    model_config = ConfigDict(extra="forbid")

    nf4_bits: float = Field(4.127, description="Bits per 4-bit weight incl. double-quantized constants.")
    adapter_bytes: float = Field(16.0, description="Bytes per LoRA parameter: fp32 weight, grad, 2 moments.")
    logits_bytes_per_vocab: float = Field(14.0, description="Bytes per token per vocab entry at the loss.")
    overhead_gib: float = Field(1.0, description="CUDA context, workspaces, allocator slack.")
    headroom: float = Field(0.9, gt=0, le=1, description="Share of GPU memory a plan may use.")


@dataclass
class MemoryPlan:
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_rank: int = 16
    lora_target: list[str] = field(default_factory=lambda: ["all-linear"])
    micro_batch: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = False
    dtype: str = "bfloat16"
    shard_gpus: int = 1  # FSDP/ZeRO-3 over this many GPUs divides weights, grads and optimizer states


@dataclass
class MemoryEstimate:
    parts: dict[str, float]  # bytes per GPU
    gpu_memory_gb: float | None  # GiB, as nvidia-smi reports it
    fits: bool | None
    suggestions: list[str]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {
            "parts_gib": {k: round(v / GIB, 3) for k, v in self.parts.items()},
            "total_gib": round(self.total / GIB, 2),
            "gpu_memory_gb": self.gpu_memory_gb,
            "fits": self.fits,
            "suggestions": self.suggestions,
        }


def activation_bytes_per_token_layer(info: ModelInfo, plan: MemoryPlan) -> float:
    """Bytes autograd keeps per token per decoder layer (16-bit base; see the module docstring)."""
    h, i, kv = info.hidden_size, info.intermediate_size, info.kv_dim
    scale = DTYPE_BYTES.get(plan.dtype, 2) / 2
    if plan.method == "full":
        return (16 * h + 8 * i + 4 * kv) * scale
    shapes = info.linear_shapes()
    adapters = sum(4 * shapes[n][0] + 4 * 2 * plan.lora_rank for n in resolve_targets(plan.lora_target))
    return (8 * h + 6 * i + 4 * kv) * scale + adapters


def _weights(info: ModelInfo, plan: MemoryPlan, settings: MemorySettings) -> float:
    if plan.method == "qlora":
        linear = info.layer_linear_params
        return linear * settings.nf4_bits / 8 + (info.num_params - linear) * 2
    return info.num_params * DTYPE_BYTES.get(plan.dtype, 2)


def estimate_memory(
    info: ModelInfo,
    plan: MemoryPlan,
    gpu_memory_gb: float | None = None,
    settings: MemorySettings | None = None,
) -> MemoryEstimate:
    s = settings or MemorySettings()
    shard = max(1, plan.shard_gpus)
    tokens = plan.micro_batch * plan.seq_len
    parts: dict[str, float] = {"weights": _weights(info, plan, s) / shard}
    if plan.method == "full":
        wbytes = DTYPE_BYTES.get(plan.dtype, 2)
        parts["gradients"] = info.num_params * wbytes / shard
        parts["optimizer"] = 2 * info.num_params * wbytes / shard
    else:
        lora = info.lora_params_per_rank(plan.lora_target) * plan.lora_rank
        parts["adapters+grads+optimizer"] = lora * s.adapter_bytes
    per_layer = activation_bytes_per_token_layer(info, plan)
    if plan.gradient_checkpointing:
        kept = 2 * info.hidden_size * DTYPE_BYTES.get(plan.dtype, 2) / 2
        parts["activations"] = tokens * (info.num_layers * kept + per_layer)
    else:
        parts["activations"] = tokens * info.num_layers * per_layer
    parts["logits"] = tokens * info.vocab_size * s.logits_bytes_per_vocab
    parts["overhead"] = s.overhead_gib * GIB
    est = MemoryEstimate(parts, gpu_memory_gb, None, [])
    if gpu_memory_gb is not None:
        est.fits = est.total <= gpu_memory_gb * GIB * s.headroom
        if not est.fits:
            est.suggestions = suggest_changes(info, plan, gpu_memory_gb, s)
    return est


def suggest_changes(info: ModelInfo, plan: MemoryPlan, gpu_memory_gb: float, settings: MemorySettings) -> list[str]:
    """Each single change that makes the plan fit, cheapest in quality first."""
    from dataclasses import replace

    budget = gpu_memory_gb * GIB * settings.headroom
    candidates: list[tuple[str, MemoryPlan]] = []
    if not plan.gradient_checkpointing:
        candidates.append(
            (
                "gradient_checkpointing: true (about 30% slower steps)",
                replace(plan, gradient_checkpointing=True),
            )
        )
    mb = plan.micro_batch
    while mb > 1:
        mb //= 2
        candidates.append(
            (
                f"per_device_train_batch_size: {mb} (raise gradient_accumulation_steps by "
                f"{plan.micro_batch // mb}x to keep the effective batch)",
                replace(plan, micro_batch=mb),
            )
        )
    if plan.method != "qlora":
        candidates.append(("method: qlora (LoRA on a 4-bit base, quantization_bit: 4)", replace(plan, method="qlora")))
    cut = plan.seq_len
    while cut > 256:
        cut //= 2
        candidates.append((f"cutoff_len: {cut} (check how many examples it truncates)", replace(plan, seq_len=cut)))
    combined = replace(
        plan, gradient_checkpointing=True, micro_batch=1, method="qlora" if plan.method != "full" else "full"
    )
    candidates.append(
        (
            "gradient_checkpointing: true with per_device_train_batch_size: 1"
            + (" and quantization_bit: 4" if plan.method != "full" else ""),
            combined,
        )
    )
    out, kinds = [], set()
    for text, p in candidates:
        kind = text.split(":")[0]
        total = estimate_memory(info, p, None, settings).total
        if total <= budget and kind not in kinds:  # the mildest fitting change of each kind
            kinds.add(kind)
            out.append(f"{text} -> {total / GIB:.1f} GiB")
    return out or [
        f"no single change fits {gpu_memory_gb:g} GB: shard over more GPUs (FSDP/ZeRO-3) or pick a smaller model"
    ]


# Data-parallel strategies, cheapest in communication first, and what each keeps whole on every GPU.
STRATEGIES = {
    "ddp": "every GPU holds the whole model, its gradients and optimizer states (fastest when it fits)",
    "shard_grad_op": "FSDP2 without resharding after forward (ZeRO-2 like): gradients and optimizer states "
    "sharded, weights gathered whole through each step; `deepspeed:` with a ZeRO-2 JSON is estimated the same",
    "full_shard": "FSDP2 full sharding (ZeRO-3 like): weights, gradients and optimizer states sharded; one "
    "layer at a time gathered; `deepspeed:` with a ZeRO-3 JSON is estimated the same",
}


def strategy_estimates(
    info: ModelInfo,
    plan: MemoryPlan,
    gpus: int,
    gpu_memory_gb: float | None = None,
    settings: MemorySettings | None = None,
) -> dict[str, MemoryEstimate]:
    """Peak memory per GPU of each strategy on `gpus` GPUs. The sharded states divide by the GPU
    count (FSDP2 shards each parameter evenly); full_shard adds the two layers in flight (the one
    computing and the one prefetched) gathered whole."""
    s = settings or MemorySettings()
    whole = estimate_memory(info, replace(plan, shard_gpus=1), None, s).parts
    n = max(1, gpus)
    layer = info.layer_linear_params / max(1, info.num_layers) * DTYPE_BYTES.get(plan.dtype, 2)
    out = {}
    for name in STRATEGIES:
        parts = dict(whole)
        if name != "ddp":
            for key in ("gradients", "optimizer"):
                if key in parts:
                    parts[key] /= n
            if "adapters+grads+optimizer" in parts:  # 16 bytes a parameter: 4 weight, 12 grad and moments
                parts["adapters+grads+optimizer"] *= (4 + 12 / n) / 16
        if name == "full_shard":
            parts["weights"] = whole["weights"] / n + (2 * layer if n > 1 else 0)
            if "adapters+grads+optimizer" in parts:
                parts["adapters+grads+optimizer"] = whole["adapters+grads+optimizer"] / n
        est = MemoryEstimate(parts, gpu_memory_gb, None, [])
        if gpu_memory_gb is not None:
            est.fits = est.total <= gpu_memory_gb * GIB * s.headroom
        out[name] = est
    return out


def choose_strategy(estimates: dict[str, MemoryEstimate]) -> str | None:
    """The first strategy that fits, in the order of STRATEGIES (least communication first)."""
    return next((name for name, est in estimates.items() if est.fits), None)
