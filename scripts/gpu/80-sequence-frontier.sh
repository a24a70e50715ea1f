#!/usr/bin/env bash
# Issue #14: the sequence and media frontier on a real card. (1) The longest max_length (a
# multiple of 64) that fits a weights-free Qwen2.5-0.5B full fine-tune at batch 1 with sdpa on
# an emulated 24 GiB card; `check` at that length must exit 0 and at the next multiple of 64
# (an ms-swift file saying so) exit 3. (2) The largest max_pixels per image for Qwen2.5-VL-7B
# LoRA with the ViT frozen at max_length 4096. At most 10 minutes on one H200.
set -euo pipefail
python -m autotune probe --model-config recipes/configs/qwen2.5-0.5b/config.json --max-length auto \
    --gpu-memory 24GiB --attn sdpa --gradient-checkpointing off --no-eval --validate-steps 5 \
    --out "$OUT/length-recipe.yaml" --force --quiet --emit swift
python - "$OUT/length-recipe.yaml" "$OUT" <<'PY'
import json, subprocess, sys
from autotune import load_recipe

recipe = load_recipe(sys.argv[1]); q = recipe.search.sequence
codes = {}
for length in (q["fit"], q["non_fit"]):
    if length is None:
        continue
    args = f"{sys.argv[2]}/length-{length}.swift.yaml"
    text = open(sys.argv[1].replace(".yaml", ".swift.yaml")).read().replace(f"max_length: {q['fit']}", f"max_length: {length}")
    open(args, "w").write(text)
    codes[length] = subprocess.run([sys.executable, "-m", "autotune", "check", sys.argv[1], "--swift-args", args]).returncode
print(json.dumps({"check": "sequence-frontier", "max_length": q["value"], "non_fit": q["non_fit"], "trials": q["trials"],
                  "check_exit_codes": codes, "held": codes.get(q["fit"]) == 0 and codes.get(q["non_fit"], 3) == 3}))
PY
python -m autotune probe --model-config recipes/configs/qwen2.5-vl-7b/config.json --train-type lora --max-length 4096 \
    --max-pixels auto --gpu-memory 24GiB --attn sdpa --gradient-checkpointing on --no-eval --validate-steps 5 \
    --out "$OUT/pixels-recipe.yaml" --force --quiet --format json > "$OUT/pixels-probe.json"
python -c "import json,sys; r=json.load(open(sys.argv[1])); q=r['search']['sequence']; print(json.dumps({'check': 'media-frontier', 'max_pixels': q['value'], 'non_fit': q['non_fit'], 'env': r['settings']['env'], 'trials': q['trials']}))" "$OUT/pixels-probe.json"
