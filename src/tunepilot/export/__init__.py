"""`tunepilot export`: ship a run (or a sweep's trial) as a loadable model.

    export_run(RUN_DIR, OUT)                       merged model: sharded safetensors, tokenizer with its
                                                   chat template, generation config, README.md
    export_run(SWEEP_DIR, OUT, trial="best")       the same, from a sweep's best (or numbered) trial
    export_run(RUN_DIR, OUT, adapter_only=True)    the PEFT adapter, tokenizer and README.md
    export_run(RUN_DIR, OUT, gguf=["f16"])         also OUT/<name>-f16.gguf and an Ollama Modelfile

Top to bottom: resolve the source, check the base model against the adapter (a mismatch is exit 2
before any weight is loaded), load and merge, check free disk space against what will be written,
write everything into a hidden temporary sibling of OUT and rename it into place last. An export that
is interrupted or fails leaves no OUT that looks complete (at most a hidden `.OUT.*.tmp`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError
from tunepilot.export.source import Source, resolve_source
from tunepilot.io import atomic_write_dir, atomic_write_json, atomic_write_text

DTYPES = ("auto", "float32", "bfloat16", "float16")
_SAFETY = 1.05  # 5% over the estimate: metadata, tokenizer, filesystem blocks


def export_run(
    source_path: str | Path,
    out: str | Path,
    *,
    trial: str | None = None,
    adapter_only: bool = False,
    gguf: list[str] | None = None,
    base: str | None = None,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    force: bool = False,
    disk_free: Callable[[Path], int] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    out, log, gguf = Path(out), log or (lambda msg: None), list(gguf or [])
    _check_arguments(out, adapter_only, gguf, dtype, force)
    source = resolve_source(source_path, trial)
    from tunepilot.export import merge as merge_mod

    if adapter_only:
        merge_mod.adapter_base_matches(source, base)
        return _export_adapter(source, out, base, disk_free, log)
    log(f"loading and merging {source.run_dir}")
    merged = merge_mod.merge(source, base)
    torch_dtype = _dtype(dtype, merged.model)
    n_params = sum(p.numel() for p in merged.model.parameters())
    need = n_params * torch_dtype.itemsize + sum(_gguf_bytes(t, n_params) for t in gguf)
    check_disk(out, need, disk_free)
    kind = "full" if source.full_model is not None else "merged"

    def fill(tmp: Path) -> None:
        log(f"writing {torch_dtype} safetensors (shards of at most {max_shard_size})")
        _write_model(merged, tmp, torch_dtype, max_shard_size)
        files = _write_gguf(merged, source, tmp, gguf, out.name, log) if gguf else []
        _finish(
            tmp,
            out.name,
            source,
            merged.base,
            kind,
            merged.notes,
            {"dtype": str(torch_dtype).removeprefix("torch."), "gguf": [f.name for f in files]},
        )

    atomic_write_dir(out, fill)
    return _result(out, source, merged.base, kind, merged.notes)


def _check_arguments(out: Path, adapter_only: bool, gguf: list[str], dtype: str, force: bool) -> None:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if adapter_only and gguf:
        raise UserError("--adapter-only and --gguf: a GGUF holds a whole model; drop one of them")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: is a file; pass a directory to write the export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"-o {out}: not empty; pass --force to replace it, or another directory")
    if gguf:
        from tunepilot.export import gguf as gguf_mod

        gguf_mod.check_types(gguf)
        gguf_mod.converter_command()  # what to install, before the long merge
        gguf_mod.check_quantizer(gguf)


def _dtype(name: str, model):
    import torch

    if name != "auto":
        return getattr(torch, name)
    recorded = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded, None)
    return recorded if recorded in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def _gguf_bytes(outtype: str, n_params: int) -> int:
    from tunepilot.export.gguf import BYTES_PER_PARAM, quantizer_type

    size = BYTES_PER_PARAM.get(outtype, 2.0) * n_params
    return int(size + (2.0 * n_params if quantizer_type(outtype) else 0))  # the f16 file it is made from


def check_disk(out: Path, need: int, disk_free: Callable[[Path], int] | None = None) -> None:
    """Refuse to start writing what does not fit (exit 2), naming both sizes."""
    where = next(p for p in [out, *out.parents] if p.exists())
    free = (disk_free or (lambda p: shutil.disk_usage(p).free))(where)
    if free < need * _SAFETY:
        raise UserError(
            f"-o {out}: the export needs about {_gib(need * _SAFETY)} and {where} has {_gib(free)} free; "
            "free some space or write the export to another disk"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"


def _write_model(merged, tmp: Path, torch_dtype, max_shard_size: str) -> None:
    model, tokenizer = merged.model.to(torch_dtype), merged.tokenizer
    generation = model.generation_config
    if generation is not None:
        generation.eos_token_id = (
            generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
        )
        generation.pad_token_id = (
            generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
        )
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(tmp)


def _write_gguf(merged, source: Source, tmp: Path, types: list[str], name: str, log) -> list[Path]:
    from tunepilot.export.gguf import write_gguf
    from tunepilot.export.modelfile import modelfile

    log(f"converting to GGUF ({', '.join(types)}) with llama.cpp's converter")
    files = write_gguf(tmp, tmp, types, name or "model")
    text = modelfile(
        files[0].name,
        getattr(merged.tokenizer, "chat_template", None),
        merged.tokenizer.eos_token,
        source.config.data.system,
    )
    atomic_write_text(tmp / "Modelfile", text)
    return files


def _export_adapter(source: Source, out: Path, base: str | None, disk_free, log) -> dict[str, Any]:
    from tunepilot.export.merge import tokenizer_for

    need = sum(f.stat().st_size for f in source.adapter.rglob("*") if f.is_file())
    check_disk(out, need, disk_free)
    tokenizer = tokenizer_for(source, base)
    base_name = base or _base_name(source)

    def fill(tmp: Path) -> None:
        log(f"copying the adapter of {source.run_dir}")
        shutil.copytree(source.adapter, tmp, dirs_exist_ok=True)
        if base is not None:
            _set_adapter_base(tmp, base)
        tokenizer.save_pretrained(tmp)
        _finish(tmp, out.name, source, base_name, "adapter", [], {})

    atomic_write_dir(out, fill)
    return _result(out, source, base_name, "adapter", [])


def _set_adapter_base(adapter_dir: Path, base: str) -> None:
    import json

    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    atomic_write_json(path, data)


def _base_name(source: Source) -> str:
    m = source.config.model
    return str(Path(m.name_or_path) / m.gguf_file) if m.gguf_file else m.name_or_path


def _finish(
    tmp: Path, name: str, source: Source, base: str, kind: str, notes: list[str], extra: dict[str, Any]
) -> None:
    """README.md (model card) and export.json (provenance), written last inside the temporary directory."""
    from tunepilot import __version__
    from tunepilot.export.card import model_card

    atomic_write_json(
        tmp / "export.json",
        {
            "tunepilot": __version__,
            "kind": kind,
            "base_model": base,
            "run_dir": str(source.run_dir),
            "trial": source.trial,
            "sweep_dir": str(source.sweep_dir) if source.sweep_dir else None,
            "notes": notes,
            **extra,
        },
    )
    atomic_write_text(tmp / "README.md", model_card(source, base, kind, name, notes))


def _result(out: Path, source: Source, base: str, kind: str, notes: list[str]) -> dict[str, Any]:
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {
        "out": str(out),
        "kind": kind,
        "run_dir": str(source.run_dir),
        "trial": source.trial,
        "base_model": base,
        "files": files,
        "bytes": size,
        "notes": notes,
    }
