#!/usr/bin/env bash
# Issue #11, the most informative check first: a weights-free Qwen2.5-0.5B full fine-tune at 2048
# tokens with eval on an emulated 24 GiB card, then the user's run -- 20 steps of the real
# Trainer at the recipe's settings with two mid-training evaluations (a compute_metrics, so
# logits are kept) -- and its torch.cuda.max_memory_reserved() against the recipe's budget.
set -euo pipefail
python -m autotune probe --model-config recipes/configs/qwen2.5-0.5b/config.json --max-length 2048 \
    --gpu-memory 24GiB --attn sdpa --gradient-checkpointing search --global-batch-size 32 \
    --out "$OUT/oracle-recipe.yaml" --force --quiet --format json > "$OUT/oracle-probe.json"
python - "$OUT/oracle-recipe.yaml" <<'PY'
import json, sys, tempfile, time
import numpy as np, torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments
from autotune import load_recipe

recipe = load_recipe(sys.argv[1]); s = recipe.settings
budget = recipe.search.budget_bytes
torch.cuda.set_per_process_memory_fraction(recipe.hardware.capacity_bytes / torch.cuda.get_device_properties(0).total_memory)
config = AutoConfig.from_pretrained("recipes/configs/qwen2.5-0.5b")
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=s.attn_implementation).cuda()
L, V = s.max_length, config.vocab_size

class Worst(torch.utils.data.Dataset):
    def __init__(self, n): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i):
        ids = torch.randint(0, V, (L,))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

def accuracy(p):
    logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == p.label_ids))}

steps = 20
user = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=steps, eval_strategy="steps", eval_steps=steps // 2,
                         save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True)
args = recipe.apply(user)
n_train = args.per_device_train_batch_size * args.gradient_accumulation_steps * steps
trainer = Trainer(model=model, args=args, train_dataset=Worst(n_train), compute_metrics=accuracy,
                  eval_dataset=Worst(args.per_device_eval_batch_size * 2 * (args.eval_accumulation_steps or 4)))
torch.cuda.reset_peak_memory_stats()
start = time.time()
status = "held"
try:
    trainer.train()
except torch.OutOfMemoryError as exc:
    status = f"OOM: {str(exc).splitlines()[0][:120]}"
reserved = torch.cuda.max_memory_reserved()
print(json.dumps({"check": "trainer-oracle", "status": status, "train_batch": s.per_device_train_batch_size,
                  "accumulation": s.gradient_accumulation_steps, "eval_batch": s.per_device_eval_batch_size,
                  "checkpointing": s.gradient_checkpointing, "probe_validation_peak": recipe.validation.peak_bytes,
                  "max_memory_reserved": reserved, "budget": budget, "within_budget": reserved <= budget,
                  "wall_s": round(time.time() - start, 1)}))
PY
