#!/usr/bin/env bash
# The ms-swift user's round trip, judged by the real `swift sft`: an ms-swift argument file of
# their own -> `autotune probe --swift-args FILE --emit swift` (simulated GPU) -> the file written
# back with the tuned settings -> `swift sft` of that file runs to its end (on the CPU).
#   SWIFT_VENV=/work/venvs/swift46 bash scripts/swift_sft_roundtrip.sh     # or swift312 (README: ms-swift's real parsers)
# A tiny Qwen2 model (weights and a word-level tokenizer from the `tokenizers` library) and a
# 40-sample dataset are made in a temporary folder; nothing is downloaded. Exit 0: swift sft
# trained on the file autotune wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT_VENV=${SWIFT_VENV:-/work/venvs/swift46}
AUTOTUNE_PY=${AUTOTUNE_PY:-$PWD/.venv/bin/python}
major=$("$SWIFT_VENV/bin/python" -c 'import swift; print(swift.__version__.split(".")[0])')
tuner=$([ "$major" = 3 ] && echo train_type || echo tuner_type)   # the spelling of the user's own version
config=$([ "$major" = 3 ] && echo --config || true)                 # 3.x: swift sft --config FILE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$SWIFT_VENV/bin/python" - "$work" "$PWD/autotune/configs/tiny-qwen2.json" <<'EOF'
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
work, config = sys.argv[1], json.load(open(sys.argv[2]))
vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|endoftext|>": 3, **{f"w{i}": 4 + i for i in range(200)}}
core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>")
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
model.save_pretrained(f"{work}/Qwen2.5-0.5B-Instruct")
tokenizer.save_pretrained(f"{work}/Qwen2.5-0.5B-Instruct")
with open(f"{work}/data.jsonl", "w") as f:
    for i in range(40):
        user = " ".join(f"w{(i + j) % 200}" for j in range(20))
        f.write(json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "w1 w2 w3"}]}) + "\n")
EOF
cat > "$work/my-sft.yaml" <<EOF
model: $work/Qwen2.5-0.5B-Instruct
model_type: qwen2
template: qwen2_5
$tuner: lora
lora_rank: 8
dataset: [$work/data.jsonl]
max_length: 64
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 4
save_strategy: 'no'
learning_rate: 1e-4
output_dir: $work/out
report_to: [none]
use_cpu: true
EOF
"$AUTOTUNE_PY" -m autotune probe --swift-args "$work/my-sft.yaml" --device sim --gpu-memory 64MiB --out "$work/r.yaml" \
    --emit swift --validate-steps 3 --quiet
echo "== the file written back"
cat "$work/r.swift.yaml"
echo "== swift sft"
"$SWIFT_VENV/bin/swift" sft $config "$work/r.swift.yaml" >"$work/sft.log" 2>&1 || { tail -n 30 "$work/sft.log"; exit 1; }
grep -oE "'train_loss': '[^']*'|'global_step/max_steps': '[^']*'" "$work/sft.log" | tail -n 2
echo "swift sft ($("$SWIFT_VENV/bin/python" -c 'import swift; print(swift.__version__)')) trained on the file autotune wrote: exit 0"
