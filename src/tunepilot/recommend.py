"""A starting config from model shape, data size, GPU memory and task, with the reason for every value.

Each value is chosen by one small function that returns (value, reason); `recommend()` runs them in
order (method and rank first, batch and memory last) and returns the values, reasons and the memory
estimate. The learning-rate law is the same one `tunepilot transfer` uses to move a config between
models (tunepilot.transfer.rules), so recommend and transfer never disagree about a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tunepilot.errors import UserError
from tunepilot.memory import (
    STRATEGIES,
    MemoryEstimate,
    MemoryPlan,
    choose_strategy,
    estimate_memory,
    strategy_estimates,
)
from tunepilot.modelinfo import ModelInfo, read_model_info
from tunepilot.transfer.rules import lora_lr_for_width
from tunepilot.transfer.settings import TransferSettings

Task = Literal["sft", "pretrain", "classification", "extraction"]
Method = Literal["lora", "qlora", "full"]
# LoRA Without Regret (Schulman et al. 2025) measured rank-independent optimal LRs with a fixed alpha
# (32) and the PEFT 1/r scaling; we keep that parametrisation so the rank can change without the LR.
LORA_ALPHA = 32
RANKS = (8, 16, 32, 64, 128, 256)


@dataclass
class DataStats:
    records: int
    sampled: int
    mean_tokens: float
    p99_tokens: int
    max_tokens: int
    mean_trained_tokens: float
    token_source: str  # "tokenizer" or "estimate (4 characters per token)"

    def trained_tokens(self) -> float:
        return self.records * self.mean_trained_tokens


@dataclass
class Recommendation:
    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    memory: MemoryEstimate | None = None
    strategies: dict[str, dict] | None = None  # per-GPU estimate of each multi-GPU strategy

    def set(self, key: str, value: Any, reason: str) -> None:
        self.values[key] = value
        self.reasons[key] = reason


# ------------------------------------------------------------------------------------------- data
def scan_data(path: str | Path, model_path: str | Path, fmt: str = "auto", sample: int = 2000) -> DataStats:
    """Count records (all) and token lengths (first `sample` records) without building a dataset."""
    from tunepilot.data.parse import ParseState, iter_conversations

    if not Path(path).exists():
        raise UserError(f"--data: {path} does not exist; give the path of your training data file")
    count_tokens, source = _token_counter(model_path)
    state, totals, trained = ParseState(), [], []
    for conv in iter_conversations(str(path), fmt, {}, None, state):
        if len(totals) >= sample:
            continue  # keep counting records, stop measuring
        if conv.is_text:
            n = count_tokens(conv.text)
            totals.append(n)
            trained.append(n)
            continue
        overhead = 8 * len(conv.messages)  # role markers and end-of-turn tokens of a chat template
        totals.append(sum(count_tokens(m["content"]) for m in conv.messages) + overhead)
        trained.append(sum(count_tokens(m["content"]) + 1 for m in conv.messages if m["role"] == "assistant"))
    if not totals:
        raise UserError(f"--data: {path}: no record parsed; run `tunepilot validate {path}` to see why")
    ordered = sorted(totals)
    return DataStats(
        records=state.records,
        sampled=len(totals),
        mean_tokens=sum(totals) / len(totals),
        p99_tokens=ordered[int(0.99 * (len(ordered) - 1))],
        max_tokens=ordered[-1],
        mean_trained_tokens=sum(trained) / len(trained),
        token_source=source,
    )


def _token_counter(model_path: str | Path):
    path = Path(model_path)
    if path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokenizer"
    # No tokenizer next to the config (config-only dirs, GGUF files): ~4 characters per token is the
    # usual figure for English BPE vocabularies; the output says the lengths are estimates.
    return (lambda text: max(1, math.ceil(len(text) / 4))), "estimate (4 characters per token)"


# -------------------------------------------------------------------------------------- choices
def choose_rank(info: ModelInfo, data: DataStats, epochs: float, task: Task) -> tuple[int, str]:
    """Smallest rank whose adapter has at least as many parameters as trained tokens seen."""
    per_rank = info.lora_params_per_rank(["all-linear"])
    need = data.trained_tokens() * epochs
    floor = 8 if task in ("classification", "extraction") else 16
    rank = next((r for r in RANKS if r >= floor and r * per_rank >= need), RANKS[-1])
    return rank, (
        f"capacity: {rank} x {per_rank:,} adapter params/rank = {rank * per_rank / 1e6:.1f}M >= "
        f"{need / 1e6:.2f}M trained tokens ({task}); LoRA tracks full fine-tuning until the data "
        "outgrows the adapter (LoRA Without Regret, 2025); minimum "
        f"{floor} for {task}"
    )


def choose_epochs(data: DataStats, task: Task) -> tuple[float, str]:
    if task == "pretrain":
        return 1.0, "continued pretraining: one pass; repeated text is memorised rather than learned"
    if data.records < 1000:
        return 3.0, f"{data.records} records is small: 3 passes (watch eval loss for overfitting)"
    if data.records < 20000:
        return 2.0, f"{data.records} records: 2 passes; the second pass usually still lowers eval loss"
    return 1.0, f"{data.records} records: one pass is usually enough and avoids memorising"


def choose_cutoff(data: DataStats, max_len: int = 4096) -> tuple[int, str]:
    cutoff = min(max_len, 1 << max(7, math.ceil(math.log2(max(data.p99_tokens, 1)))))
    return cutoff, (
        f"99% of records are <= {data.p99_tokens} tokens (max {data.max_tokens}, "
        f"{data.token_source}); next power of two, capped at {max_len}"
    )


def choose_effective_batch(data: DataStats, epochs: float) -> tuple[int, str]:
    # LoRA Without Regret: LoRA loses more than full fine-tuning at large batches; Tinker's guide asks
    # for >= 100 optimizer steps. Take the largest of 32/16/8 that still gives 100 steps.
    seen = data.records * epochs
    batch = next((b for b in (32, 16, 8) if seen / b >= 100), 8)
    return batch, (
        f"{batch} sequences per optimizer step -> {math.ceil(seen / batch)} steps "
        "(>= 100 steps wanted; LoRA degrades at large batches)"
    )


def per_gpu(info: ModelInfo, plan: MemoryPlan, gpu_gb: float | None, gpus: int) -> tuple[str, MemoryEstimate]:
    """The strategy to use on `gpus` GPUs and its per-GPU estimate: DDP when it fits (least
    communication), else FSDP2 sharding gradients and optimizer, else full sharding."""
    if gpus <= 1:
        return "single", estimate_memory(info, plan, gpu_gb)
    estimates = strategy_estimates(info, plan, gpus, gpu_gb)
    name = choose_strategy(estimates) or "full_shard"
    return name, estimates[name]


def fit_memory(
    info: ModelInfo, plan: MemoryPlan, gpu_gb: float | None, effective: int, gpus: int = 1
) -> tuple[MemoryPlan, MemoryEstimate, list[str]]:
    """Largest micro-batch that fits (sharded over `gpus` where needed); then checkpointing; then
    (LoRA only) a 4-bit base."""
    notes: list[str] = []
    if gpu_gb is None:
        p = replace(plan, micro_batch=min(max(1, effective // gpus), 4))
        return p, per_gpu(info, p, None, gpus)[1], ["no --gpu-memory given: micro-batch 4, not checked"]
    ladder = [replace(plan, gradient_checkpointing=False), replace(plan, gradient_checkpointing=True)]
    if plan.method == "lora":
        ladder.append(replace(plan, method="qlora", gradient_checkpointing=True))
    for candidate in ladder:
        mb = max(1, effective // gpus)
        while mb >= 1:
            p = replace(candidate, micro_batch=mb)
            est = per_gpu(info, p, gpu_gb, gpus)[1]
            if est.fits:
                if p.method != plan.method:
                    notes.append("LoRA on a 16-bit base does not fit: QLoRA (4-bit base)")
                return p, est, notes
            mb //= 2
    p = replace(ladder[-1], micro_batch=1)
    return p, per_gpu(info, p, gpu_gb, gpus)[1], ["does not fit even at micro-batch 1 with checkpointing"]


# -------------------------------------------------------------------------------------- recommend
def recommend(
    model: str | Path,
    data: str | Path,
    gpu_memory_gb: float | None = None,
    task: Task = "sft",
    method: Method = "lora",
    settings: TransferSettings | None = None,
    gpus: int = 1,
) -> tuple[Recommendation, ModelInfo, DataStats]:
    info = read_model_info(model)
    stats = scan_data(data, model)
    rec = Recommendation()
    epochs, why = choose_epochs(stats, task)
    rec.set("num_train_epochs", epochs, why)
    cutoff, why = choose_cutoff(stats)
    rec.set("cutoff_len", cutoff, why)
    effective, why_batch = choose_effective_batch(stats, epochs)
    rank = 16 if method == "full" else _set_adapter(rec, info, stats, epochs, task)
    plan, est, notes = fit_memory(
        info, MemoryPlan(method=method, lora_rank=rank, seq_len=cutoff), gpu_memory_gb, effective, gpus
    )
    _set_lr(rec, info, plan.method, settings or TransferSettings())
    accum = max(1, effective // (plan.micro_batch * gpus))
    rec.set(
        "per_device_train_batch_size",
        plan.micro_batch,
        f"largest power of two <= {effective} whose estimate fits ({est.total / 2**30:.1f} GiB)"
        + ("; " + "; ".join(notes) if notes else ""),
    )
    rec.set(
        "gradient_accumulation_steps",
        accum,
        f"{plan.micro_batch} x {accum} x {gpus} GPU(s) = {plan.micro_batch * accum * gpus}: {why_batch}",
    )
    if gpus > 1:
        _set_parallel(rec, info, plan, gpu_memory_gb, gpus)
    rec.set(
        "gradient_checkpointing",
        plan.gradient_checkpointing,
        "needed to fit" if plan.gradient_checkpointing else "not needed: activations fit; steps stay fast",
    )
    rec.set(
        "quantization_bit",
        4 if plan.method == "qlora" else None,
        "QLoRA: the 16-bit base does not fit" if plan.method == "qlora" else "16-bit base fits",
    )
    # Kept on the LoRA corpus's evidence (docs/evidence.md, claim 4; 100 SmolLM2 runs): constant LR
    # without warmup wins matched pairs only below the good LRs; at GSM8K's better LRs cosine with 3%
    # warmup wins all 4 pairs (constant worse by 0.030 eval loss), and both tasks' best runs use it.
    rec.set(
        "warmup_ratio",
        0.03,
        "3% warmup lets Adam's moment estimates settle before the peak LR (the QLoRA training script's default)",
    )
    rec.set(
        "lr_scheduler_type",
        "cosine",
        "cosine decay to zero: the common default for SFT; the last steps at low LR lower the final loss",
    )
    rec.memory = est
    return rec, info, stats


def _set_parallel(rec: Recommendation, info: ModelInfo, plan: MemoryPlan, gpu_gb: float | None, gpus: int) -> None:
    strategy, _ = per_gpu(info, plan, gpu_gb, gpus)
    table = strategy_estimates(info, plan, gpus, gpu_gb)
    per = ", ".join(f"{name} {est.total / 2**30:.1f} GiB" for name, est in table.items())
    rec.set("nproc", gpus, f"data parallel over {gpus} GPUs (`tunepilot train CONFIG --nproc {gpus}`)")
    why = f"{STRATEGIES[strategy]}; per GPU: {per}"
    rec.set("fsdp", None if strategy == "ddp" else f"{strategy} auto_wrap", why)
    rec.strategies = {name: est.to_dict() for name, est in table.items()}


def _set_adapter(rec: Recommendation, info: ModelInfo, stats: DataStats, epochs: float, task: Task) -> int:
    """LoRA rank, alpha, dropout and targets, each with its reason; returns the rank."""
    rank, why = choose_rank(info, stats, epochs, task)
    rec.set("lora_rank", rank, why)
    rec.set(
        "lora_alpha",
        LORA_ALPHA,
        "fixed alpha with alpha/r scaling: the optimal LR is then about "
        "independent of rank (LoRA Without Regret, 2025)",
    )
    rec.set(
        "lora_dropout",
        0.05 if stats.records < 10000 else 0.0,
        "small data: a little dropout regularises"
        if stats.records < 10000
        else "enough data: dropout only slows learning",
    )
    rec.set(
        "lora_target",
        "all-linear",
        "adapt attention and MLP: attention-only LoRA underperforms (LoRA Without Regret, 2025; Biderman et al. 2024)",
    )
    return rank


def _set_lr(rec: Recommendation, info: ModelInfo, method: str, settings: TransferSettings) -> None:
    lr, why = lora_lr_for_width(info, settings, full=method == "full")
    rec.set("learning_rate", float(f"{lr:.3g}"), why)


def run_config_raw(rec: Recommendation, model: str | Path, data: str | Path, method: str) -> dict[str, Any]:
    """Flat keys for tunepilot.config.build_config (the YAML that `tunepilot train` accepts)."""
    raw = {k: v for k, v in rec.values.items() if v is not None}
    raw.update(
        {
            "model_name_or_path": str(model),
            "train": str(data),
            "dtype": "auto",
            "finetuning_type": "full" if method == "full" else "lora",
            "val_size": 0.05,
        }
    )
    return raw
