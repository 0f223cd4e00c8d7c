"""Transfer rules: small objects that each move one part of a config from a proxy model to a target.

    ctx = TransferContext(proxy_info, target_info, values from the proxy's winning config, targets)
    for rule in RULES: step = rule.apply(ctx, settings)   # each step: reason, source, before -> after

A rule reads the two models' shapes (config.json only) and the current values, changes what it owns
and returns a `Step` saying what it did and why. Order matters and is the registry's order: method,
rank and alpha first (they change the adapter scale the LR is relative to), then the LR laws (width,
depth), then GPU count and batch size. A new rule is one class plus one line in `RULES`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from tunepilot.modelinfo import ModelInfo
from tunepilot.transfer.settings import TransferSettings


@dataclass
class Step:
    rule: str
    changed: dict[str, tuple[Any, Any]]  # key -> (before, after)
    reason: str
    source: str
    lr_factor: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = {k: {"from": a, "to": b} for k, (a, b) in self.changed.items()}
        return out


@dataclass
class TransferContext:
    proxy: ModelInfo
    target: ModelInfo
    values: dict[str, Any]  # learning_rate, method, lora_rank, lora_alpha, use_rslora, micro, accum, gpus
    proxy_values: dict[str, Any] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)  # explicit target choices from the user

    def __post_init__(self) -> None:
        self.proxy_values = dict(self.values)

    @property
    def effective_batch(self) -> int:
        v = self.values
        return v["per_device_train_batch_size"] * v["gradient_accumulation_steps"] * v["gpus"]

    def scale_lr(self, factor: float) -> tuple[float, float]:
        before = self.values["learning_rate"]
        self.values["learning_rate"] = before * factor
        return before, self.values["learning_rate"]


class ScalingRule(Protocol):
    name: ClassVar[str]
    source: ClassVar[str]

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step: ...


def _lr_step(
    rule: ScalingRule,
    ctx: TransferContext,
    factor: float,
    reason: str,
    extra: dict[str, tuple[Any, Any]] | None = None,
) -> Step:
    before, after = ctx.scale_lr(factor)
    changed = dict(extra or {})
    if factor != 1.0:
        changed["learning_rate"] = (before, after)
    return Step(rule.name, changed, reason, rule.source, lr_factor=factor)


def width_factor(h: int, family: str, s: TransferSettings) -> float:
    """(reference / H)^P: the width term of the Tinker LR fit for this family."""
    return (s.width_reference / h) ** s.width_exponent(family)


def lora_lr_for_width(info: ModelInfo, s: TransferSettings, full: bool = False) -> tuple[float, str]:
    """The absolute LR the width fit gives for a model (used by `recommend`)."""
    base = s.full_base_lr * (1.0 if full else s.lora_lr_multiplier)
    p = s.width_exponent(info.family)
    lr = base * width_factor(info.hidden_size, info.family, s)
    fit = "published fit" if info.family in s.width_exponents else "no published fit for this family: default"
    return lr, (
        f"{base:.0e} x ({s.width_reference:g}/{info.hidden_size})^{p} = {lr:.2e} "
        f"({'full fine-tuning' if full else 'LoRA: 10x full FT'}; {info.family} exponent {p}, {fit}; "
        "Tinker cookbook hyperparam_utils / LoRA Without Regret, 2025)"
    )


class MethodRule:
    name = "method"
    source = "LoRA Without Regret (Thinking Machines, 2025): optimal LoRA LR ~10x full fine-tuning's"

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        was, now = ctx.values["method"], ctx.requested.get("method", ctx.values["method"])
        ctx.values["method"] = now
        lora = {"lora", "qlora"}
        if (was in lora) == (now in lora):
            return _lr_step(
                self,
                ctx,
                1.0,
                f"{was} -> {now}: same LR regime (QLoRA trains like 16-bit LoRA, Dettmers et al. 2023)",
            )
        factor = s.lora_lr_multiplier if now in lora else 1 / s.lora_lr_multiplier
        return _lr_step(self, ctx, factor, f"{was} -> {now}: x{factor:g}", {"method": (was, now)})


class RankRule:
    name = "rank"
    source = (
        "LoRA Without Regret (2025): a rank is enough while adapter params exceed what the data "
        "teaches; the same rank on a wider model already has more parameters"
    )

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        r = ctx.values["lora_rank"]
        per_p, per_t = (
            ctx.proxy.lora_params_per_rank(["all-linear"]),
            ctx.target.lora_params_per_rank(["all-linear"]),
        )
        if "lora_rank" in ctx.requested:
            new, why = ctx.requested["lora_rank"], "rank given on the command line"
        elif s.rank_policy == "match_params":
            new = max(4, 2 ** round(math.log2(max(1.0, r * per_p / per_t))))
            why = f"match the proxy adapter's size: {r} x {per_p:,} ~ {new} x {per_t:,} params"
        else:
            new = r
            why = (
                f"kept at {r}: the target's adapter is {per_t / per_p:.2f}x the proxy's at the same rank "
                f"({r * per_t / 1e6:.1f}M vs {r * per_p / 1e6:.1f}M params)"
            )
        ctx.values["lora_rank"] = new
        return Step(self.name, {"lora_rank": (r, new)} if new != r else {}, why, self.source)


class AlphaRule:
    name = "alpha"
    source = (
        "LoRA Without Regret (2025): at fixed alpha (alpha/r scaling) the optimal LR is ~rank "
        "independent; rsLoRA (Kalajievski 2023): alpha/sqrt(r) keeps learning rank-stable"
    )

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        r_p, r_t = ctx.proxy_values["lora_rank"], ctx.values["lora_rank"]
        alpha = ctx.values["lora_alpha"]
        if r_p == r_t:
            return _lr_step(self, ctx, 1.0, f"rank unchanged: alpha {alpha:g} and the LR stay")
        if ctx.values.get("use_rslora"):
            return _lr_step(self, ctx, 1.0, f"rsLoRA: alpha {alpha:g} kept; scale alpha/sqrt(r) is rank-stable")
        if s.alpha_policy == "keep_alpha":
            return _lr_step(self, ctx, 1.0, f"alpha {alpha:g} kept: with alpha/r scaling the LR is ~rank independent")
        new_alpha = alpha * r_t / r_p
        ctx.values["lora_alpha"] = new_alpha
        factor = (alpha / new_alpha) ** s.rank_lr_exponent
        return _lr_step(
            self,
            ctx,
            factor,
            f"alpha/rank kept at {alpha / r_p:g}: alpha {alpha:g} -> {new_alpha:g}; "
            f"the update grows with alpha x LR, so LR x{factor:.3g}",
            {"lora_alpha": (alpha, new_alpha)},
        )


class WidthRule:
    name = "width"
    source = (
        "Tinker cookbook get_lr fit (Thinking Machines, 2025): LR ~ (2000/hidden)^P, P=0.781 Llama, "
        "0.0775 Qwen; muP (Yang et al. 2022) gives Adam LR ~ 1/width for hidden weights from scratch"
    )

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        p, t = ctx.proxy, ctx.target
        factor = width_factor(t.hidden_size, t.family, s) / width_factor(p.hidden_size, p.family, s)
        same = p.family == t.family
        law = (
            f"(H_proxy/H_target)^{s.width_exponent(t.family)} = ({p.hidden_size}/{t.hidden_size})^"
            f"{s.width_exponent(t.family)}"
            if same
            else f"fit({t.family}, {t.hidden_size}) / fit({p.family}, {p.hidden_size}) [families differ; "
            "assumes the fit's common base LR]"
        )
        return _lr_step(self, ctx, factor, f"{law}: LR x{factor:.3g}")


class DepthRule:
    name = "depth"
    source = "setting depth_exponent (default 0: the width fits were measured on series whose depth grows too)"

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        lp, lt = ctx.proxy.num_layers, ctx.target.num_layers
        factor = (lp / lt) ** s.depth_exponent
        return _lr_step(self, ctx, factor, f"layers {lp} -> {lt}, exponent {s.depth_exponent:g}: LR x{factor:.3g}")


class GpuRule:
    name = "gpus"
    source = "effective batch = micro-batch x accumulation x GPUs (data parallel)"

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        v, req = ctx.values, ctx.requested
        before = {k: v[k] for k in ("gpus", "per_device_train_batch_size", "gradient_accumulation_steps")}
        target_batch = ctx.effective_batch
        v["gpus"] = req.get("gpus", v["gpus"])
        v["per_device_train_batch_size"] = req.get("per_device_train_batch_size", v["per_device_train_batch_size"])
        if "gradient_accumulation_steps" in req:
            v["gradient_accumulation_steps"] = req["gradient_accumulation_steps"]
            why = "batch layout given on the command line"
        elif s.keep_global_batch:
            per_step = v["per_device_train_batch_size"] * v["gpus"]
            v["gradient_accumulation_steps"] = max(1, round(target_batch / per_step))
            why = f"accumulation set to keep the effective batch near {target_batch}"
        else:
            why = "accumulation kept; the effective batch follows the GPU count"
        changed = {k: (before[k], v[k]) for k in before if before[k] != v[k]}
        return Step(self.name, changed, f"{why}: effective batch {target_batch} -> {ctx.effective_batch}", self.source)


class BatchRule:
    name = "batch"
    source = "Malladi et al. 2022, square-root scaling rule for Adam: LR ~ sqrt(batch)"

    def apply(self, ctx: TransferContext, s: TransferSettings) -> Step:
        p = ctx.proxy_values
        b_p = p["per_device_train_batch_size"] * p["gradient_accumulation_steps"] * p["gpus"]
        b_t = ctx.effective_batch
        factor = (b_t / b_p) ** s.batch_exponent
        return _lr_step(
            self,
            ctx,
            factor,
            f"effective batch {b_p} -> {b_t}, exponent {s.batch_exponent:g}: "
            f"LR x{factor:.3g}" + (" (no change)" if b_t == b_p else ""),
            {"effective_batch": (b_p, b_t)} if b_t != b_p else None,
        )


RULES: list[ScalingRule] = [MethodRule(), RankRule(), AlphaRule(), WidthRule(), DepthRule(), GpuRule(), BatchRule()]


def apply_rules(ctx: TransferContext, settings: TransferSettings, rules: list[ScalingRule] | None = None) -> list[Step]:
    """Run the registry in order; the LR is the product of the rules' factors."""
    skip = {"rank", "alpha"} if ctx.requested.get("method", ctx.values["method"]) == "full" else set()
    return [rule.apply(ctx, settings) for rule in (rules or RULES) if rule.name not in skip]
