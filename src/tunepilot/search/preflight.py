"""Checks a sweep passes before its first trial: the template fits the tokenizer, the engine supports
the config's keys, and an existing study was made from this same spec.

A study stores a fingerprint of the spec it was created from (study user attrs `spec_hash` and
`spec`): the search space, objective, strategy, engine and the resolved base config. Re-running an
edited sweep file against that study would mix trials of two different searches, so it is refused
with what changed, unless `--force-resume` is given (the new spec is then stored). The budget,
storage, names, enqueued trials and dedupe switch may change freely: extending the budget is how a
finished sweep is continued.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from tunepilot.config import ALIASES, RunConfig
from tunepilot.errors import ExitCode, UserError
from tunepilot.search.spec import SweepSpec

# Spec keys that do not change what a trial means (see the module doc).
FREE_KEYS = ("budget", "storage", "study_name", "output_dir", "enqueue", "skip_duplicates", "base")
# Keys of the base config the packed engine does not apply to its trials (it injects its own LoRA).
PACKED_UNSUPPORTED = {"method.use_dora": False, "method.neftune_noise_alpha": None}
# Parallel strategies the packed engine cannot apply, and how the standard engine's trials run them.
SHARDED = {"deepspeed": "DeepSpeed ZeRO", "fsdp": "FSDP sharding"}
STANDARD_RUNS = {"deepspeed": "under DeepSpeed; on N GPUs with nproc: N", "fsdp": "sharded by FSDP2 with nproc: N > 1"}
# Flat config keys that choose the parallel strategy (deepspeed, fsdp, fsdp_config).
PARALLEL_KEYS = {key for key, (section, _) in ALIASES.items() if section == "parallel"}
MAX_CHANGES = 20


def check_before_start(spec: SweepSpec, base: RunConfig | None) -> None:
    if base is None:
        return
    _engine_keys(spec, base)
    _rank(spec, base)
    _template(base)


def _rank(spec: SweepSpec, base: RunConfig) -> None:
    """A searched (or base) LoRA rank larger than the targeted layers allow stops the sweep here."""
    from tunepilot.modelinfo import check_rank_fits
    from tunepilot.search.spec import Range

    m = base.method
    dist = spec.space.get("lora_rank")
    if dist is None:
        ranks, key = [m.lora_rank], "base.method.lora_rank"
    elif isinstance(dist, Range):
        ranks, key = [dist.high], "space.lora_rank"
    else:
        ranks, key = [r for r in dist if isinstance(r, int) and not isinstance(r, bool)], "space.lora_rank"
    if ranks:
        check_rank_fits(base.model.name_or_path, m.finetuning_type, m.lora_target, int(max(ranks)), key)


def _engine_keys(spec: SweepSpec, base: RunConfig) -> None:
    if spec.engine.name != "packed":
        return
    problems = []
    dumped = base.model_dump(mode="json")
    for key, off in PACKED_UNSUPPORTED.items():
        section, name = key.split(".")
        if dumped[section][name] != off or name in spec.space:
            problems.append(f"base.{key}: the packed engine does not apply {name}; remove it or use engine: standard")
    problems.extend(_sharding(spec, base))
    if problems:
        raise UserError(f"{len(problems)} key(s) the packed engine cannot train", ExitCode.USAGE, problems)


def _sharding(spec: SweepSpec, base: RunConfig) -> list[str]:
    """DeepSpeed or FSDP asked for (`parallel.resolved`): the packed engine trains every trial in its
    one process on one device and cannot apply them, so they are refused, not silently left out.
    `nproc` > 1 is not refused: it is the process count the effective batch is planned for, and a
    packed trial, as any run on fewer processes, accumulates the missing ranks' micro-batches
    (engines/plan.py): it trains the same global batches N processes would."""
    problems = []
    strategy = base.parallel.resolved
    if strategy in SHARDED:
        key, written = _strategy_key(base)
        where = f"the base config {spec.base}" if isinstance(spec.base, str) else "the sweep file's base"
        problems.append(
            f"base.parallel.{key}: `{written}` in {where} asks for {SHARDED[strategy]}, which the packed "
            f"engine cannot apply (it trains every trial in one process on one device); remove `{written}` "
            "to pack the trials, or use engine: standard, whose trials train as `tunepilot train` does "
            f"({STANDARD_RUNS[strategy]})"
        )
    problems.extend(
        f"space.{key}: the packed engine trains every trial in one process on one device and cannot "
        "search a parallel strategy; use engine: standard"
        for key in sorted(PARALLEL_KEYS & set(spec.space))
    )
    return problems


def _strategy_key(base: RunConfig) -> tuple[str, str]:
    """The key that asked for the resolved strategy, and how it reads (to name it in a refusal)."""
    p = base.parallel
    if p.strategy != "auto":
        return "strategy", f"strategy: {p.strategy}"
    if p.deepspeed:
        return "deepspeed", f"deepspeed: {p.deepspeed}"
    if p.fsdp:
        return "fsdp", f"fsdp: {' '.join(p.fsdp)}"
    keys = sorted(p.fsdp_config.model_fields_set - {"version"})
    return "fsdp_config", f"fsdp_config: {{{', '.join(keys)}}}"


def _template(base: RunConfig) -> None:
    """`validate`'s template checks on the base config's tokenizer: a named template whose markers
    are not single tokens stops the sweep here, not after every trial trained on them as text."""
    if base.data.template == "auto" and base.data.format != "text":
        return
    from tunepilot.data.prepare import check_template, check_template_fit
    from tunepilot.models import load_tokenizer

    tokenizer = load_tokenizer(base.model)
    check_template(base.data, tokenizer)
    try:
        check_template_fit(base.data, tokenizer)
    except UserError as e:
        raise UserError(f"base: {e.message}", e.code, e.problems) from e


# ------------------------------------------------------------------------------ spec fingerprint
def spec_record(spec: SweepSpec, base: RunConfig | None) -> dict[str, Any]:
    """What defines the search: the spec without its free keys, and the resolved base config
    (output and tracking excepted: where results go does not change them)."""
    record = {k: v for k, v in spec.model_dump(mode="json").items() if k not in FREE_KEYS}
    if base is not None:
        record["base"] = {k: v for k, v in base.model_dump(mode="json").items() if k not in ("output", "tracking")}
    return record


def spec_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_study_spec(storage: str, study_name: str, record: dict[str, Any], force: bool, where: str = "") -> None:
    """Refuse to resume a study created from another spec (before any model is loaded)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return  # a new study: its spec is stored when it is created
    stored = study.user_attrs.get("spec_hash")
    if stored is None or stored == spec_hash(record) or force:
        return
    changes = diff(study.user_attrs.get("spec") or {}, record)
    shown = changes[:MAX_CHANGES] + (
        [f"... and {len(changes) - MAX_CHANGES} more"] if len(changes) > MAX_CHANGES else []
    )
    raise UserError(
        f"{where or storage}: study {study_name!r} was created from a different sweep spec "
        f"({len(changes)} change(s)); resuming it would mix trials of two searches. Start a new study "
        "(another study_name, or another --dir), or pass --force-resume to continue this one with the new spec",
        ExitCode.USAGE,
        shown or ["the spec's fingerprint differs"],
    )


def store_spec(study: optuna.Study, record: dict[str, Any]) -> None:
    """Called once the study is open: the spec it runs under (new, unchanged, or forced)."""
    digest = spec_hash(record)
    if study.user_attrs.get("spec_hash") != digest:
        study.set_user_attr("spec_hash", digest)
        study.set_user_attr("spec", record)


def diff(old: Any, new: Any, path: str = "") -> list[str]:
    """`key.path: old -> new` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: added ({new[key]!r})")
            elif key not in new:
                out.append(f"{sub}: removed (was {old[key]!r})")
            else:
                out.extend(diff(old[key], new[key], sub))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
