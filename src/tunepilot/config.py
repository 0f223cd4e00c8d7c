"""Typed run settings: sections, key aliases, YAML in and out, and one resolution order.

    defaults < file < command-line overrides (`--set key=value`)

A config is YAML with sections (`model`, `data`, `method`, `train`, `output`, `health`,
`evaluate`, `tracking`), or flat
keys as HF `TrainingArguments`, PEFT `LoraConfig` and LLaMA-Factory write them: every flat key is
routed to its section by name or alias, so a LLaMA-Factory SFT YAML loads as it is. Keys those
tools know but tunepilot does not use are named in a warning; any other unknown key is an error
with a "did you mean". All problems are reported at once. Validators reject; they never rewrite.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunepilot.errors import ExitCode, UserError
from tunepilot.evaluate.settings import EvalSettings
from tunepilot.health.settings import HealthSettings
from tunepilot.parallel import ParallelSettings
from tunepilot.tracking.settings import TrackingSettings


class _Section(BaseModel):
    # allow_inf_nan=False: `learning_rate: .inf` or `.nan` is refused with its key, like any bad value
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(_Section):
    name_or_path: str = Field(..., description="Hub id, local model directory, or path to a .gguf file.")
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path (dequantized on load).")
    tokenizer: str | None = Field(
        None, description="Tokenizer directory or hub id, when it is not the model's own (default: name_or_path)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bf16 on GPUs that support it, else fp32."
    )
    quantization_bit: Literal[4, 8] | None = Field(None, description="Load the base in 4/8 bit (QLoRA).")
    quantization_method: Literal["bitsandbytes"] = Field(
        "bitsandbytes", description="How quantization_bit quantizes: bitsandbytes (bnb), the one backend supported."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the model repository.")
    cache_dir: str | None = Field(None, description="Where hub models are cached (default: the HF cache).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")

    @field_validator("quantization_method", mode="before")
    @classmethod
    def _quantization_method(cls, v: Any) -> Any:
        from tunepilot.config_keys import quantization_method

        return quantization_method(v)


class DataSettings(_Section):
    train: str = Field(
        ...,
        description="Training data: a file (jsonl/json/csv/parquet) or directory, or "
        "dataset names of dataset_dir/dataset_info.json (comma-separated).",
    )
    eval: str | None = Field(
        None, description="Evaluation data file (or dataset names); default: split val_size from train."
    )
    dataset_dir: str | None = Field(
        None,
        description="Folder holding a LLaMA-Factory dataset_info.json; names in "
        "train/eval are looked up there (default: ./data).",
    )
    val_size: float = Field(0.0, ge=0, lt=1, description="Share of train held out for eval when eval is unset.")
    format: str = Field("auto", description="alpaca, sharegpt, messages, prompt_completion, text, or auto.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map format fields to your columns, e.g. {prompt: text}."
    )
    template: str = Field(
        "auto",
        description="Prompt template: auto (the model's chat template) or a name "
        "(LLaMA-Factory names such as qwen are mapped).",
    )
    allow_template_mismatch: bool = Field(
        False,
        description="Train even when a named template's markers are not "
        "single tokens of the tokenizer (refused by default).",
    )
    system: str | None = Field(None, description="System prompt added to every record without one.")
    cutoff_len: int = Field(1024, gt=0, description="Maximum tokens per example; longer ones are truncated.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many training records.")
    max_eval_samples: int | None = Field(None, gt=0, description="Use at most this many eval records.")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (default: responses only).")
    mask_history: bool = Field(False, description="Train only on the last assistant turn of a conversation.")
    packing: bool = Field(False, description="Pack several examples into one sequence of cutoff_len.")
    mix: Literal["stacked", "phased"] = Field(
        "stacked",
        description="Several training datasets: stacked (mixed and shuffled together) or phased "
        "(trained one after another, in the order named). Searchable in sweeps.",
    )
    mix_weights: list[float] | None = Field(
        None,
        description="stacked: each dataset's share of the mixed stream, one per dataset (normalised); "
        "default: their sizes.",
    )
    phase_steps: list[int] | None = Field(
        None,
        description="phased: optimizer steps of each phase; default: num_train_epochs over each "
        "dataset (or max_steps split by dataset size).",
    )
    phase_learning_rates: list[float] | None = Field(
        None,
        description="phased: peak learning rate of each phase (default train.learning_rate); every "
        "phase has its own warmup and schedule.",
    )

    @field_validator("template", mode="before")
    @classmethod
    def _template_name(cls, v: Any) -> Any:
        from tunepilot.config_keys import template_name

        return template_name(v)

    @field_validator("mix", mode="before")
    @classmethod
    def _mix_name(cls, v: Any) -> Any:
        from tunepilot.config_keys import mix_name

        return mix_name(v)

    @field_validator("mix_weights", "phase_steps", "phase_learning_rates", mode="before")
    @classmethod
    def _number_list(cls, v: Any) -> Any:
        from tunepilot.config_keys import number_list

        return number_list(v)

    @model_validator(mode="after")
    def _check_mixture(self) -> DataSettings:
        from tunepilot.config_keys import mixture_problems

        problems = mixture_problems(self)
        if problems:
            raise ValueError("\n".join(problems))  # one problem a line: listed one by one
        return self


class MethodSettings(_Section):
    finetuning_type: Literal["lora", "full"] = Field(
        "lora", description="lora (QLoRA with quantization_bit) or full fine-tuning."
    )
    lora_rank: int = Field(8, gt=0, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 x rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target: list[str] = Field(
        ["all-linear"], description="Modules to adapt: all-linear or names (q_proj,v_proj,...)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (PEFT use_dora); slower per step.")
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: uniform noise of this scale on the input embeddings while training (e.g. 5)."
    )

    @field_validator("lora_target", mode="before")
    @classmethod
    def _split_targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        return ["all-linear" if t == "all" else t for t in v] if isinstance(v, list) else v

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


# Upper bounds that catch a typo (1e12 for 1e2) before it becomes a run that never ends.
MAX_STEPS = 10_000_000
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 10.0


class TrainSettings(_Section):
    learning_rate: float = Field(2e-4, gt=0, le=MAX_LEARNING_RATE, description="Peak learning rate.")
    num_train_epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS, description="Passes over the training data.")
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS, description="Optimizer steps; > 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = Field(4, gt=0, description="Micro-batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    nproc: int = Field(
        1,
        gt=0,
        le=4096,
        description="Data-parallel processes (GPUs) the effective batch is planned "
        "for: micro-batch x accumulation x nproc. Fewer processes accumulate the rest.",
    )
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr"] = Field(
        "cosine",
        description="Decay after warmup: cosine, linear, constant, or cosine_with_min_lr "
        "(with lr_scheduler_kwargs min_lr or min_lr_rate).",
    )
    lr_scheduler_kwargs: dict[str, float] = Field(
        default_factory=dict,
        validate_default=True,
        description="Scheduler options as in transformers: num_cycles (cosine), min_lr or min_lr_rate "
        "(cosine_with_min_lr).",
    )
    optim: str = Field(
        "adamw_torch",
        description="Optimizer: adamw_torch, adamw_torch_fused, sgd, adafactor, or "
        "bitsandbytes' adamw_8bit, paged_adamw_8bit, paged_adamw_32bit.",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a share of total steps.")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Warmup steps; > 0 overrides warmup_ratio.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables.")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    seed: int = Field(42, description="Seed for weights init, dropout and data order.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps; default: 10 times a run.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Eval micro-batch size.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps; default: at each eval.")
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after N evals without gain.")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Minimum eval-loss gain that counts.")
    load_best_model_at_end: bool = Field(True, description="Restore the adapter of the best eval at the end.")
    logging_steps: int = Field(1, gt=0, description="Print a progress line every N steps.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to train.")

    @field_validator("lr_scheduler_type", mode="before")
    @classmethod
    def _scheduler_alias(cls, v: Any) -> Any:
        return "cosine" if v == "cosine_with_warmup" else v

    @field_validator("lr_scheduler_kwargs", mode="before")
    @classmethod
    def _scheduler_kwargs_json(cls, v: Any) -> Any:
        from tunepilot.config_keys import scheduler_kwargs_json

        return scheduler_kwargs_json(v)

    @field_validator("lr_scheduler_kwargs")
    @classmethod
    def _scheduler_kwargs(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        from tunepilot.config_keys import check_scheduler_kwargs

        check_scheduler_kwargs(info.data.get("lr_scheduler_type", "cosine"), v)
        return v

    @field_validator("optim", mode="before")
    @classmethod
    def _optimizer_name(cls, v: Any) -> Any:
        from tunepilot.config_keys import optimizer_name

        return optimizer_name(v)


class OutputSettings(_Section):
    output_dir: str = Field("runs/run", description="Run directory: metrics, checkpoints, adapter, summary.")
    overwrite_output_dir: bool = Field(False, description="Allow a new run in a non-empty run directory.")


class RunConfig(_Section):
    model: ModelSettings
    data: DataSettings
    method: MethodSettings = Field(default_factory=MethodSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    parallel: ParallelSettings = Field(default_factory=ParallelSettings)

    @model_validator(mode="after")
    def _split_gguf_path(self) -> RunConfig:
        path = self.model.name_or_path
        if path.endswith(".gguf") and self.model.gguf_file is None:
            p = Path(path)
            object.__setattr__(self.model, "name_or_path", str(p.parent))
            object.__setattr__(self.model, "gguf_file", p.name)
        return self


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "method": MethodSettings,
    "train": TrainSettings,
    "output": OutputSettings,
    "health": HealthSettings,
    "evaluate": EvalSettings,
    "tracking": TrackingSettings,
    "parallel": ParallelSettings,
}

# Flat names from HF TrainingArguments, PEFT LoraConfig and LLaMA-Factory -> (section, field).
ALIASES: dict[str, tuple[str, str]] = {
    "model_name_or_path": ("model", "name_or_path"),
    "torch_dtype": ("model", "dtype"),
    "dataset": ("data", "train"),
    "train_file": ("data", "train"),
    "eval_dataset": ("data", "eval"),
    "eval_file": ("data", "eval"),
    "mix_strategy": ("data", "mix"),
    "interleave_probs": ("data", "mix_weights"),
    "max_seq_length": ("data", "cutoff_len"),
    "max_length": ("data", "cutoff_len"),
    "formatting": ("data", "format"),
    "r": ("method", "lora_rank"),
    "lora_r": ("method", "lora_rank"),
    "target_modules": ("method", "lora_target"),
    "lr": ("train", "learning_rate"),
    "micro_batch_size": ("train", "per_device_train_batch_size"),
    "epochs": ("train", "num_train_epochs"),
    "warmup": ("train", "warmup_ratio"),
    "logging_dir": ("tracking", "tensorboard_dir"),
    "deepspeed": ("parallel", "deepspeed"),
    "fsdp": ("parallel", "fsdp"),
    "fsdp_config": ("parallel", "fsdp_config"),
}
# Keys those tools use that tunepilot ignores on purpose; named in a warning, never silently dropped.
FOREIGN_IGNORED = {
    "do_train",
    "do_eval",
    "do_predict",
    "overwrite_cache",
    "preprocessing_num_workers",
    "dataloader_num_workers",
    "plot_loss",
    "save_only_model",
    "ddp_timeout",
    "resume_from_checkpoint",
    "flash_attn",
    "eval_strategy",
    "evaluation_strategy",
    "save_strategy",
    "logging_strategy",
    "push_to_hub",
    "gradient_checkpointing_kwargs",
    "remove_unused_columns",
    "bias",
    "task_type",
    "stage",
    "ddp_find_unused_parameters",
    "include_num_input_tokens_seen",
}


# Sections whose keys may be written flat; `health` and `evaluate` keys (enabled, metric, limit,
# batch_size...) would be ambiguous at the top level, so they are always written inside their section.
FLAT_SECTIONS = ("model", "data", "method", "train", "output", "tracking")


def _flat_index() -> dict[str, tuple[str, str]]:
    index = {name: (sec, name) for sec in FLAT_SECTIONS for name in SECTIONS[sec].model_fields}
    index.update(ALIASES)
    return index


def _route_special(key: str, value: Any, nested: dict[str, dict[str, Any]], problems: list[str]) -> bool:
    """Flat keys whose meaning is a value elsewhere (bf16: true -> model.dtype: bfloat16)."""
    if key in ("bf16", "fp16") and value:
        nested["model"]["dtype"] = "bfloat16" if key == "bf16" else "float16"
        return True
    if key in ("bf16", "fp16", "tf32"):
        return True
    if key == "stage" and value not in ("sft", "pt"):
        problems.append(f"stage: {value!r} is not supported; tunepilot trains sft (and pt) stages only")
        return True
    from tunepilot.config_keys import special_key

    handled, problem = special_key(key, value)
    if problem is not None:
        problems.append(problem)
    return handled


def to_nested(raw: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """Route flat and sectioned keys into sections. Returns (nested, unknown-key problems, warnings)."""
    nested: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    index, problems, ignored = _flat_index(), [], []
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                _put(nested, f"{key}.{sub}", v, index, problems, ignored)
        else:
            _put(nested, key, value, index, problems, ignored)
    warnings = [f"ignored keys (not used by tunepilot): {', '.join(sorted(ignored))}"] if ignored else []
    return nested, problems, warnings


def _put(nested, key: str, value: Any, index, problems: list[str], ignored: list[str]) -> None:
    section, _, name = key.rpartition(".")
    if not section and _route_special(name, value, nested, problems):
        return
    if name in FOREIGN_IGNORED and not section:
        ignored.append(name)
        return
    target = (section, name) if section and name in SECTIONS.get(section, _Section).model_fields else None
    if target is None and section in ("", *SECTIONS):
        hit = index.get(name)
        target = hit if hit and (not section or hit[0] == section) else None
    if target is None:
        problems.append(_unknown(key, value, index))
        return
    nested[target[0]][target[1]] = value


def _unknown(key: str, value: Any, index: dict[str, tuple[str, str]]) -> str:
    candidates = list(index) + [f"{s}.{f}" for s, f in index.values()]
    guess = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return f"{key}: unknown key (value {value!r}){hint}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items; values are parsed as YAML scalars (1e-4, true, [a, b])."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=1e-4")
        try:
            out[key.strip()] = yaml_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)})") from e
    return out


MAX_YAML_NODES = 100_000  # a document's values counted with every alias expanded; far above any real config


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping and aliases that expand too far."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]}); keep only one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root) -> None:
    """Count the nodes a document expands to (aliases included); refuse more than MAX_YAML_NODES."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        known = sizes.get(id(node))
        if known == -1:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to the node that holds it (a recursive anchor)", node.start_mark
            )
        if known is not None:
            return known
        sizes[id(node)] = -1
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        )
        total = 1 + sum(size(child) for child in children)
        if total > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); "
                "write the values out or use fewer aliases",
                node.start_mark,
            )
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


def yaml_load(text: str) -> Any:
    """YAML as tunepilot reads it everywhere: safe, no duplicate keys, bounded alias expansion."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def read_yaml(path: str | Path) -> dict[str, Any]:
    from tunepilot.io import read_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass the path of a YAML config")
    try:
        raw = yaml_load(read_text(path, "YAML file"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', e)}); fix it there") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level, got {type(raw).__name__}")
    return raw


def merge_raw(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; dotted keys (train.learning_rate) are kept as given and routed later."""
    return {**base, **overrides}


def build_config(
    raw: dict[str, Any], source: str = "config", check_paths: bool = True, *, root: Path | None = None
) -> tuple[RunConfig, list[str]]:
    """Validate raw keys into a RunConfig; every problem at once in one UserError (exit 2).
    `root`: the config file's folder, where relative data paths are looked up first."""
    nested, problems, warnings = to_nested(raw)
    path_problems = _path_problems(nested["data"], root)  # before validation: the config holds resolved paths
    config = None
    try:
        config = RunConfig.model_validate({k: v for k, v in nested.items() if v or k in ("model", "data")})
    except ValidationError as e:
        problems.extend(format_validation(e))
    if check_paths:
        problems.extend(path_problems)
    if problems:
        raise UserError(f"{source}: {len(problems)} problem(s) in the config", ExitCode.USAGE, problems)
    return config, warnings


def format_validation(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            out.append(f"{loc}: required key is missing")
        elif err["type"] == "value_error" and isinstance(err["input"], dict):  # a section's check: names its keys
            out += str(err["ctx"]["error"]).splitlines()
        else:
            out.append(f"{loc}: {err['input']!r} is invalid ({err['msg']})")
    return out


def _path_problems(data: dict[str, Any], root: Path | None) -> list[str]:
    """Relative data paths resolved next to the config file, then in the working directory; dataset
    names of a LLaMA-Factory dataset_info.json stay names (tunepilot.data.sources)."""
    from tunepilot.data.sources import resolve_data_paths

    return resolve_data_paths(data, root)


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, check_paths: bool = True
) -> tuple[RunConfig, list[str]]:
    raw = read_yaml(path) if path is not None else {}
    raw = merge_raw(raw, parse_overrides(overrides or []))
    root = Path(path).resolve().parent if path is not None else None
    return build_config(raw, source=str(path or "--set"), check_paths=check_paths, root=root)


def as_raw(config: RunConfig) -> dict[str, Any]:
    """Every value explicit, except `fsdp_config` of a run that does not shard: `strategy: auto`
    reads any fsdp_config key a user wrote as asking for FSDP, so a DDP run written with all of them
    would come back as FSDP."""
    raw = config.model_dump(mode="json")
    if config.parallel.resolved != "fsdp":
        raw["parallel"].pop("fsdp_config")
    return raw


def dump_config(config: RunConfig) -> str:
    """YAML with sections, every value explicit: what ran, ready to run again."""
    return yaml.safe_dump(as_raw(config), sort_keys=False)


# Keys a resumed run may change: they decide when to evaluate, log, save or stop and where results go,
# not what the optimizer does at each step. Any other changed key makes an exact resume impossible
# (deny by default, so a key added later is safe from silent mixing until it is listed here).
RESUME_SAFE = (
    "output.",
    "health.",
    "evaluate.",
    "tracking.",
    "model.cache_dir",
    "train.device",
    "train.eval_steps",
    "train.save_steps",
    "train.logging_steps",
    "train.per_device_eval_batch_size",
    "train.early_stopping_patience",
    "train.early_stopping_threshold",
    "train.load_best_model_at_end",
)
# Eval-data keys are safe only when no eval share is split off the training data.
RESUME_SAFE_WITHOUT_SPLIT = ("data.eval", "data.max_eval_samples")


def resume_conflicts(saved: RunConfig, new: RunConfig) -> list[str]:
    """The keys (dotted, sorted) whose change between a run's saved config and the resuming config
    would change the trained result, so that the run cannot continue exactly where it stopped."""
    old_flat, new_flat = _flatten(as_raw(saved)), _flatten(as_raw(new))
    no_split = saved.data.val_size == 0 and new.data.val_size == 0
    changed = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
    return [
        k
        for k in changed
        if not k.startswith(RESUME_SAFE) and not (no_split and k.startswith(RESUME_SAFE_WITHOUT_SPLIT))
    ]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_with(config: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """A copy with flat or dotted keys replaced, validated like a file (used by sweeps and transfer)."""
    raw = as_raw(config)
    raw.update(updates)
    new, _ = build_config(raw, source="updated config", check_paths=False)
    return new
