#!/usr/bin/env bash
# Issue #12: a weights-free Qwen2.5-0.5B GRPO LoRA probe on a real card (<= 10 minutes) with
# vLLM's colocated share reserved as a block (vLLM is not installed there), TRL carried as wheels
# (the device README: `pip download --no-deps` trl and datasets' wheels into .whl; pip install
# --target /tmp/site; PYTHONPATH=/tmp/site). Then `check` re-runs the recipe's RLHF run, and the
# same probe without vLLM measures the policy's own generate(). Records frontiers, peaks, the
# rollout record and the wall time.
set -euo pipefail
CONFIG=recipes/configs/qwen2.5-0.5b/config.json
common=(--model-config "$CONFIG" --train-type lora --rlhf-type grpo --max-length 1024 --max-completion-length 512
        --num-generations 8 --global-batch-size 32 --attn sdpa --gradient-checkpointing search --validate-steps 5 --force --format json)
python -m autotune probe "${common[@]}" --use-vllm --vllm-gpu-memory-utilization 0.4 --out "$OUT/grpo-vllm.yaml" > "$OUT/grpo-vllm.json"
python -m autotune check "$OUT/grpo-vllm.yaml"
python -m autotune probe "${common[@]}" --max-completion-length 128 --out "$OUT/grpo-generate.yaml" > "$OUT/grpo-generate.json"
python - "$OUT"/grpo-vllm.json "$OUT"/grpo-generate.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path)); s, st = r["search"], r["settings"]
    print(path, "frontier", s["frontier"], "trials", len(s["trials"]), "wall", s["wall_s"],
          {k: st.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                                 "gradient_checkpointing", "vllm_gpu_memory_utilization")})
    print("  rollout", r["rlhf"].get("rollout"), "validation", r["validation"]["passed"], r["validation"]["peak_bytes"])
PY
