#!/usr/bin/env bash
# Issue #2: the probe on a real card with weights-free configs (0.5B and 7B), LoRA and full.
set -euo pipefail
for spec in "qwen2.5-0.5b full 2048" "qwen2.5-7b lora 4096" "qwen2.5-7b full 1024"; do
  set -- $spec
  python -m autotune probe --model-config "recipes/configs/$1/config.json" --train-type "$2" --max-length "$3" \
      --global-batch-size 64 --out "$OUT/probe-$1-$2.yaml" --force --format json > "$OUT/probe-$1-$2.json"
  python - "$OUT/probe-$1-$2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["search"]
print(sys.argv[1], "frontier", s["frontier"], "trials", len(s["trials"]), "wall", s["wall_s"],
      "peak", r["validation"]["peak_bytes"], "capacity", s["capacity_bytes"])
PY
done
