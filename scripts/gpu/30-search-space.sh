#!/usr/bin/env bash
# Issue #3: the whole search space on a real card -- weights-free Qwen2.5-7B config, LoRA, 4k tokens,
# sdpa and eager x gradient checkpointing on/off, eval frontier (logits kept), 20-step validation run.
# Records trials, wall time per phase, the chosen configuration and the validated peak vs capacity.
set -euo pipefail
python -m autotune probe --model-config recipes/configs/qwen2.5-7b/config.json --train-type lora --max-length 4096 \
    --global-batch-size 64 --attn sdpa,eager --gradient-checkpointing search --validate-steps 20 \
    --out "$OUT/space-qwen2.5-7b-lora.yaml" --plot "$OUT/space-qwen2.5-7b-lora.png" --force --format json \
    > "$OUT/space-qwen2.5-7b-lora.json"
python -m autotune report "$OUT/space-qwen2.5-7b-lora.yaml"
python - "$OUT/space-qwen2.5-7b-lora.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s, v, st = r["search"], r["validation"], r["settings"]
print("chosen", {k: st[k] for k in ("attn_implementation", "gradient_checkpointing", "per_device_train_batch_size",
                                    "gradient_accumulation_steps", "per_device_eval_batch_size", "eval_accumulation_steps")})
print("frontier", s["frontier"], "trials", len(s["trials"]), "phases", s["phases"], "wall", s["wall_s"])
print("validation passed", v["passed"], "peak", v["peak_bytes"], "capacity", s["capacity_bytes"],
      "headroom %", v["headroom_pct"], "tok/s", v["tokens_per_s"])
for c in s["candidates"]:
    print(c["attn_implementation"], c["gradient_checkpointing"], c["status"], c["frontier"], c["tokens_per_s"], c["reason"] or "")
PY
