#!/usr/bin/env bash
# GPU checks on a CUDA machine; results go under $OUT (the device tool's output folder) or
# ./out/gpu. Each check writes $OUT/<name>.log and whatever JSON it produces; one summary line
# per check (exit code, seconds, its last line).
#   bash scripts/gpu_validate.sh          # the default: the most informative check (05-trainer-oracle), <= 10 min on one H200
#   bash scripts/gpu_validate.sh --all    # every check in scripts/gpu/, in name order
#   bash scripts/gpu_validate.sh NAME     # the checks whose name contains NAME
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" | tee "$OUT/device.txt" || exit 1
only=${1:-05-trainer-oracle}
[ "$only" = "--all" ] && only=""
for check in scripts/gpu/*.sh; do
  name=$(basename "$check" .sh)
  [ -n "$only" ] && [[ "$name" != *"$only"* ]] && continue
  echo "== $name"
  start=$(date +%s)
  bash "$check" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s $(tail -n 1 "$OUT/$name.log" | cut -c1-300)" | tee -a "$OUT/summary.txt"
done
