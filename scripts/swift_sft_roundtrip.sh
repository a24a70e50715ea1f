#!/usr/bin/env bash
# The ms-swift user's round trip, judged by the real `swift sft`: an ms-swift argument file of
# their own -> `autotune probe --swift-args FILE --emit swift` (simulated GPU) -> the file written
# back with the tuned settings -> `swift sft` of that file runs to its end (on the CPU).
#   SWIFT_VENV=/work/venvs/swift46 bash scripts/swift_sft_roundtrip.sh     # or swift312 (README: ms-swift's real parsers)
#   MODE=dpo SWIFT_VENV=... bash scripts/swift_sft_roundtrip.sh            # the same through `swift rlhf --rlhf_type dpo`
#   MODE=grpo SWIFT_VENV=... bash scripts/swift_sft_roundtrip.sh           # `swift rlhf --rlhf_type grpo` (no vLLM)
# A tiny Qwen2 model (weights and a byte-level tokenizer from the `tokenizers` library, with a
# ChatML chat template) and a 40-sample dataset are made in a temporary folder; nothing is
# downloaded. The probe measures the file's dataset (with its `system`); ms-swift's own count of
# the same data with its qwen2_5 template must give the same longest sample. Exit 0: the counts
# agree and swift sft trained on the file autotune wrote. MODE=dpo: the data are preference pairs
# (a rejected_response, longer than the chosen reply in some samples), a sample's length is the
# longer of its two sides. MODE=grpo: a sample's length is its prompt, the conversation without the
# reply. In every mode ms-swift's own template counts the file too (scripts/swift_template_count.py)
# and must give autotune's longest sample; sft (and dpo on 4.x, whose line is per side) also check
# `swift sft`'s "Dataset Token Length" line.
set -euo pipefail
MODE=${MODE:-sft}
case "$MODE" in sft|dpo|grpo) ;; *) echo "MODE must be sft, dpo or grpo, not $MODE" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
SWIFT_VENV=${SWIFT_VENV:-/work/venvs/swift46}
AUTOTUNE_PY=${AUTOTUNE_PY:-$PWD/.venv/bin/python}
major=$("$SWIFT_VENV/bin/python" -c 'import swift; print(swift.__version__.split(".")[0])')
tuner=$([ "$major" = 3 ] && echo train_type || echo tuner_type)   # the spelling of the user's own version
config=$([ "$major" = 3 ] && echo --config || true)                 # 3.x: swift sft --config FILE
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
"$SWIFT_VENV/bin/python" - "$work" "$PWD/autotune/configs/tiny-qwen2.json" "$MODE" <<'EOF'
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
work, config, mode = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
# Byte-level with no merges: one token per byte. transformers 5 rebuilds a qwen2 model's tokenizer
# with Qwen2's own pre-tokenizer, which a word-level vocabulary would not survive; bytes do.
vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
vocab.update({s: len(vocab) + k for k, s in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>"))})
core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
core.decoder = decoders.ByteLevel()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                    additional_special_tokens=["<|im_start|>"])
# The layout ms-swift's qwen2_5 template writes (its default system, ChatML turns), as Qwen2.5's own
# chat template does: autotune counts the data with this, ms-swift with its template.
tokenizer.chat_template = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
model.save_pretrained(f"{work}/Qwen2.5-0.5B-Instruct")
tokenizer.save_pretrained(f"{work}/Qwen2.5-0.5B-Instruct")
with open(f"{work}/data.jsonl", "w") as f:
    for i in range(40):
        user = " ".join(f"w{(i + j) % 200}" for j in range(10 + i % 15))  # samples of 10 to 24 words
        sample = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "w1 w2 w3"}]}
        if mode == "dpo":  # every third rejected reply is the longer side: the longest sample is a rejected one
            sample["rejected_response"] = " ".join(f"r{j}" for j in range(3 + (i % 3 == 0) * (30 + i % 7)))
        f.write(json.dumps(sample) + "\n")
EOF
cat > "$work/my-sft.yaml" <<EOF
$([ "$MODE" = sft ] || echo "rlhf_type: $MODE")
$([ "$MODE" = grpo ] && printf 'reward_funcs: [format]\nnum_generations: 2\nmax_completion_length: 8\nuse_vllm: false\n')
model: $work/Qwen2.5-0.5B-Instruct
model_type: qwen2
template: qwen2_5
$tuner: lora
lora_rank: 8
dataset: [$work/data.jsonl]
max_length: 512
system: 'Answer in three words, each one a w-word.'
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 4
save_strategy: 'no'
learning_rate: 1e-4
output_dir: $work/out
report_to: [none]
use_cpu: true
EOF
"$AUTOTUNE_PY" -m autotune probe --swift-args "$work/my-sft.yaml" --device sim --gpu-memory "$([ "$MODE" = sft ] && echo 64MiB || echo 256MiB)" --out "$work/r.yaml" \
    --emit swift --validate-steps 3 --quiet
echo "== the file written back"
cat "$work/r.swift.yaml"
command=$([ "$MODE" = sft ] && echo sft || echo rlhf)
echo "== swift $command"
"$SWIFT_VENV/bin/swift" $command $config "$work/r.swift.yaml" >"$work/sft.log" 2>&1 || { tail -n 30 "$work/sft.log"; exit 1; }
grep -oE "'train_loss': '[^']*'|'global_step/max_steps': '[^']*'" "$work/sft.log" | tail -n 2
# The probe ran at the data's longest sample as autotune counted it; ms-swift's template must count
# the same, and its own log line (sft; dpo on 4.x, where the line takes the longer side) agree.
ours=$("$AUTOTUNE_PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["dataset"]["tokens"]["max"])' "$work/r.yaml")
template=$("$SWIFT_VENV/bin/python" scripts/swift_template_count.py "$work/Qwen2.5-0.5B-Instruct" qwen2 qwen2_5 \
    "Answer in three words, each one a w-word." "$work/data.jsonl" "$MODE" 2>/dev/null | tail -n 1)
echo "autotune counted the longest sample at $ours tokens; ms-swift's template: $template"
[ "$template" = "$ours" ] || { echo "ms-swift's template counts the data otherwise"; exit 1; }
if [ "$MODE" = sft ] || { [ "$MODE" = dpo ] && [ "$major" != 3 ]; }; then
  theirs=$(grep -oE "Dataset Token Length: .*" "$work/sft.log" | head -n 1)
  echo "ms-swift's log: $theirs"
  echo "$theirs" | grep -qE "max=$ours(\.0+)?, size=40" || { echo "ms-swift counts the data otherwise (or dropped samples)"; exit 1; }
fi
echo "swift $command ($("$SWIFT_VENV/bin/python" -c 'import swift; print(swift.__version__)')) trained on the file autotune wrote: exit 0"
