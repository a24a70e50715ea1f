#!/usr/bin/env bash
# Issue #4: `autotune check` on a real card. Probe a weights-free 0.5B, check it (expect 0), check
# with a margin that leaves less than the measured peak (expect 3), check as if on another card
# (expect 4), and emit every launch file.
set -uo pipefail
R="$OUT/check-recipe.yaml"
python -m autotune probe --model-config recipes/configs/qwen2.5-0.5b/config.json --max-length 1024 \
    --global-batch-size 32 --out "$R" --force --quiet
python -m autotune check "$R" --format json > "$OUT/check-fits.json"; echo "check fits rc=$? (want 0)"
python -m autotune check "$R" --margin 0.9 --format json > "$OUT/check-margin.json"; echo "check margin 0.9 rc=$? (want 3)"
python -m autotune check "$R" --gpu-memory 20GiB > "$OUT/check-other-card.txt"; echo "check other card rc=$? (want 4)"
for t in swift hf deepspeed accelerate llamafactory; do
  python -m autotune emit $t "$R" -o "$OUT/launch-$t.$([ $t = hf ] || [ $t = deepspeed ] && echo json || echo yaml)" --force
done
python -m autotune emit swift "$R" -o "$OUT/launch-swift.sh" --force
