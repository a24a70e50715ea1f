#!/usr/bin/env bash
# Run every GPU check in scripts/gpu/ (in name order) on a CUDA machine; results go under
# $OUT (the device tool's output folder) or ./out/gpu. Each check writes $OUT/<name>.log and
# whatever JSON it produces; the summary lists each check's exit code.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" | tee "$OUT/device.txt" || exit 1
only=${1:-}
for check in scripts/gpu/*.sh; do
  name=$(basename "$check" .sh)
  [ -n "$only" ] && [[ "$name" != *"$only"* ]] && continue
  echo "== $name"
  start=$(date +%s)
  bash "$check" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
done
