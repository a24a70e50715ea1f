#!/usr/bin/env bash
# Issue #5: Qwen2.5-VL-7B weights-free on a real card at 1,003,520 max pixels (1280 tokens per
# image): LoRA with the ViT frozen (ms-swift's default) and a full fine-tune with nothing frozen,
# then a train + eval step of each recipe's settings, and the eval batch that OOMs in the field
# (full FT, eval batch 4) measured against the recipe's.
set -euo pipefail
CFG=recipes/configs/qwen2.5-vl-7b/config.json
run() {  # name, extra flags...
  local name=$1; shift
  python -m autotune probe --model-config "$CFG" --max-length 4096 --max-pixels 1003520 --global-batch-size 16 \
      --out "$OUT/mm-$name.yaml" --force --format json "$@" > "$OUT/mm-$name.json"
  python - "$OUT/mm-$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["search"]; m = r["multimodal"]
print(sys.argv[1], "frontier", s["frontier"], "trials", len(s["trials"]), "wall", s["wall_s"],
      "peak", r["validation"]["peak_bytes"], "capacity", s["capacity_bytes"], "vision tokens", m["vision_tokens_per_sample"],
      "freeze", r["settings"]["freeze_vit"], r["settings"]["freeze_aligner"], r["settings"]["freeze_llm"], "env", r["settings"]["env"])
PY
}
run lora-frozen-vit --train-type lora
run full-nothing-frozen --train-type full --freeze-vit false --freeze-aligner false --gradient-checkpointing
run qlora --train-type qlora
# Train and eval steps with each recipe's batch sizes (the Trainer's eval keeps logits on the device).
python - "$OUT" <<'PY'
import json, sys, yaml
from autotune.devices import make_device
from autotune.model.source import resolve
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_eval_trial, run_train_trial
from autotune.model.workload import load_workload
out = sys.argv[1]
r = yaml.safe_load(open(f"{out}/mm-full-nothing-frozen.yaml"))
s = r["settings"]
spec = ProbeSpec(max_length=4096, model_config="recipes/configs/qwen2.5-vl-7b/config.json", train_type="full",
                 freeze_vit=False, freeze_aligner=False, max_pixels=1003520, gradient_checkpointing=True)
device = make_device("cuda", None)
w = load_workload(resolve(None, spec.model_config), spec, device)
budget = r["search"]["budget_bytes"]
results = {"train": run_train_trial(w, s["per_device_train_batch_size"], 3, budget, {"gradient_checkpointing": True}).__dict__}
for bs in (1, 4):  # the field's case: eval batch 4 OOMs with logits kept, eval batch 1 fits
    results[f"eval_bs{bs}_logits_kept"] = run_eval_trial(w, bs, 3, budget, {"prediction_loss_only": False}).__dict__
json.dump(results, open(f"{out}/mm-train-eval.json", "w"), indent=1, default=str)
for k, v in results.items():
    print(k, v["outcome"], v["peak_bytes"])
PY
