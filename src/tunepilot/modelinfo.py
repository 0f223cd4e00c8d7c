"""Architecture facts of a decoder-only LM from its `config.json` (or GGUF metadata), no weights needed.

`read_model_info(path)` accepts a model directory, a directory holding only `config.json`, the path of
a `config.json`, or a `.gguf` file. The parameter count is computed from the layer shapes (embedding,
attention with grouped-query heads, gated MLP, norms, untied head), so it is checked against the
published sizes in the tests rather than trusted from a name.

Everything downstream (memory estimate, recommend, transfer rules) reads a `ModelInfo`, never a raw
config, so a new architecture needs one reader here and nothing else.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError
from tunepilot.io import read_text

# model_type -> family whose LoRA learning-rate behaviour was measured together (see transfer/settings.py).
# Only families with a published fit are grouped; any other model_type is its own family.
FAMILIES = {"llama": "llama", "qwen2": "qwen", "qwen3": "qwen", "qwen2_moe": "qwen", "qwen3_moe": "qwen"}
# Architectures whose q/k/v projections carry a bias (Qwen2 does; Llama, Qwen3 do not).
QKV_BIAS = {"qwen2"}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_type: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    dtype: str = "bfloat16"

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_params(self) -> int:
        linear = sum(a * b for a, b in self.linear_shapes().values())
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return linear + bias + 2 * self.hidden_size  # two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.embedding_params + head + self.num_layers * self.layer_params + self.hidden_size

    @property
    def layer_linear_params(self) -> int:
        """Weights of the decoder layers' linear modules: what 4-bit quantization applies to."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    def lora_params_per_rank(self, targets: list[str] | tuple[str, ...]) -> int:
        """LoRA parameters per unit of rank: r * (in + out) for each adapted module, summed over layers."""
        shapes = self.linear_shapes()
        names = resolve_targets(targets)
        return self.num_layers * sum(shapes[n][0] + shapes[n][1] for n in names)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["num_params"] = self.num_params
        return out


def resolve_targets(targets: list[str] | tuple[str, ...]) -> list[str]:
    """LoRA target names -> the decoder linear modules they adapt ('all-linear' = all seven)."""
    if not targets or "all-linear" in targets or "all" in targets:
        return list(LINEAR_NAMES)
    unknown = [t for t in targets if t not in LINEAR_NAMES]
    if unknown:
        raise UserError(
            f"lora_target: {', '.join(unknown)} not known for memory estimates; "
            f"use all-linear or some of {', '.join(LINEAR_NAMES)}"
        )
    return list(dict.fromkeys(targets))


def read_model_info(path: str | Path) -> ModelInfo:
    """ModelInfo from a model dir, a dir with only config.json, a config.json path, or a .gguf file."""
    path = Path(path)
    if path.suffix == ".gguf":
        return _from_gguf(path)
    config_path = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not config_path.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _from_gguf(ggufs[0])
    if not config_path.is_file():
        raise UserError(
            f"{path}: no config.json found; give a model directory (a directory holding "
            "only its config.json is enough) or a .gguf file"
        )
    try:
        raw = json.loads(read_text(config_path, "config.json"))
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    name = path.name if path.is_dir() else path.parent.name
    return from_config_dict(raw, name=name, source=str(config_path))


def from_config_dict(raw: dict[str, Any], name: str = "model", source: str = "config.json") -> ModelInfo:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: not a model config (a JSON object of hidden_size, num_hidden_layers, ...)")
    raw = raw.get("text_config", raw) if "hidden_size" not in raw else raw  # multimodal wrappers
    missing = [
        k
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "intermediate_size",
        )
        if k not in raw
    ]
    if missing:
        raise UserError(
            f"{source}: missing {', '.join(missing)}; tunepilot reads decoder-only LM configs "
            "(Llama, Qwen, Mistral, Gemma, Phi-3 shapes)"
        )
    model_type = str(raw.get("model_type", "unknown"))
    heads = int(raw["num_attention_heads"])
    return ModelInfo(
        name=name,
        model_type=model_type,
        family=FAMILIES.get(model_type, model_type),
        hidden_size=int(raw["hidden_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or int(raw["hidden_size"]) // heads),
        intermediate_size=int(raw["intermediate_size"]),
        vocab_size=int(raw["vocab_size"]),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", model_type in QKV_BIAS)),
        dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
    )


def check_gguf_magic(path: Path) -> None:
    """A .gguf file starts with the bytes GGUF; anything else is refused before a parser sees it."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"{path}: cannot read the GGUF file ({e.strerror or e})") from e
    if magic != b"GGUF":
        raise UserError(
            f"{path}: not a GGUF file (it does not start with GGUF); give a .gguf model file or a model directory"
        )


def _from_gguf(path: Path) -> ModelInfo:
    """GGUF metadata: `<arch>.embedding_length`, `.block_count`, ...; tied when no `output.weight`."""
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise UserError("reading a .gguf file needs the gguf package: pip install gguf") from e
    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found")
    check_gguf_magic(path)
    try:
        reader = GGUFReader(str(path))
    except (ValueError, KeyError, IndexError, struct.error) as e:  # what the GGUF parser raises on a bad file
        raise UserError(f"{path}: not a readable GGUF file ({e}); check the file (a complete download?)") from e

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    hidden = field(f"{arch}.embedding_length")
    if hidden is None:
        raise UserError(f"{path}: GGUF metadata has no {arch}.embedding_length; not a decoder LM file")
    heads = int(field(f"{arch}.attention.head_count"))
    vocab = field(f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    raw = {
        "model_type": {"qwen2": "qwen2", "qwen3": "qwen3"}.get(arch, arch),
        "hidden_size": hidden,
        "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv", heads),
        "head_dim": field(f"{arch}.attention.key_length", int(hidden) // heads),
        "intermediate_size": field(f"{arch}.feed_forward_length"),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "bfloat16",
    }
    return from_config_dict(raw, name=path.stem, source=str(path))


def check_rank_fits(model: str | Path, finetuning_type: str, targets: list[str], rank: int, key: str) -> None:
    """Refuse a LoRA rank larger than a targeted layer can hold: min(in_features, out_features) of the
    smallest decoder linear module that `targets` adapts. Only where the model is known locally (a
    directory with config.json, or a .gguf); a hub id, an unreadable model or a module name outside
    the decoder's seven linears is left to the model loader, which reports those itself."""
    if finetuning_type != "lora" or not str(model) or not Path(model).exists():
        return
    try:
        info = read_model_info(model)
    except (UserError, OSError, ValueError, struct.error):
        return
    shapes = info.linear_shapes()
    if not targets or "all-linear" in targets or "all" in targets:
        names = list(LINEAR_NAMES)
    else:
        names = [t for t in dict.fromkeys(targets) if t in shapes]
    too_small = [(n, shapes[n]) for n in names if rank > min(shapes[n])]
    if not too_small:
        return
    limit = min(min(shape) for _, shape in too_small)
    layers = ", ".join(f"{n} ({i} -> {o})" for n, (i, o) in too_small)
    raise UserError(
        f"{key}: {rank} is larger than the layers it adapts in {model} allow: {layers}; a LoRA rank "
        f"cannot exceed min(in_features, out_features) of a layer; use {key.rsplit('.', 1)[-1]} <= {limit}"
        + (" or leave those layers out of lora_target" if len(too_small) < len(names) else "")
    )
