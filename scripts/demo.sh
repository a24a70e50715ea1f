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
  device=(--device sim --gpu-memory 64MiB)
fi
mkdir -p out
# The whole search space (attention x checkpointing, eval batch) and a short validation run:
# about 10-15 s on 2 quiet CPU cores (the README's figure).
python -m autotune probe --model-config tiny-llama "${device[@]}" --max-length 128 \
    --global-batch-size 8 --validate-steps 5 --out out/demo-recipe.yaml --force "$@"
