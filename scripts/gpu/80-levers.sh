#!/usr/bin/env bash
# Issue #15: the memory levers on a real card (<= 10 minutes; needs `pip install liger-kernel`).
# Weights-free Qwen2.5-0.5B, full fine-tune, 4096 tokens: (a) partial checkpointing searched beside
# off/on with activation offloading; (b) Liger on against (c) Liger off at the same space. Records
# each candidate's frontier and tokens/s, the chosen configuration and what the lever record says.
set -euo pipefail
CONFIG=recipes/configs/qwen2.5-0.5b/config.json
common=(--model-config "$CONFIG" --max-length 4096 --global-batch-size 16 --attn sdpa --validate-steps 5 --eval-outputs loss --force --format json)
python -m autotune probe "${common[@]}" --gradient-checkpointing partial --activation-offloading search \
    --out "$OUT/levers-partial.yaml" > "$OUT/levers-partial.json"
python -m autotune probe "${common[@]}" --gradient-checkpointing search --liger on --out "$OUT/levers-liger.yaml" > "$OUT/levers-liger.json"
python -m autotune probe "${common[@]}" --gradient-checkpointing search --out "$OUT/levers-plain.yaml" > "$OUT/levers-plain.json"
python -m autotune check "$OUT/levers-partial.yaml"
python - "$OUT"/levers-partial.json "$OUT"/levers-liger.json "$OUT"/levers-plain.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path)); s, st = r["search"], r["settings"]
    print(path, "chosen", {k: st.get(k) for k in ("gradient_checkpointing", "checkpoint_every_n_layers", "activation_offloading",
                                                 "use_liger_kernel", "per_device_train_batch_size", "gradient_accumulation_steps")})
    print("  levers", s.get("levers"))
    for c in s["candidates"]:
        print("  ", c["gradient_checkpointing"], c.get("levers", {}), c["status"], c["frontier"], c["tokens_per_s"], c["reason"] or "")
PY
