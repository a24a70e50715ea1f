#!/usr/bin/env bash
# The README's main command: set up, then probe a tiny model on the real GPU if there is one,
# else on the simulated GPU (a 1 GiB card), and print the recipe's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=(--device cuda --gpu-memory 2GiB)
else
  device=(--device sim --gpu-memory 1GiB)
fi
mkdir -p out
python -m autotune probe --model-config tiny-llama "${device[@]}" --max-length 512 \
    --global-batch-size 32 --out out/demo-recipe.yaml --force "$@"
