#!/usr/bin/env bash
# Issue #6 on one CUDA card: the probe through the supervisor and its worker processes (--isolate),
# expandable_segments off / on / auto (probed in a fresh worker), the allocator's retry counts and
# reserved-vs-allocated gap per trial, a worker killed mid-trial, a resume from the journal, and
# torchrun with one process and each sharding strategy (ddp, fsdp; zero2/zero3 when deepspeed is installed).
set -euo pipefail
CFG=recipes/configs/qwen2.5-0.5b/config.json
COMMON=(--model-config "$CFG" --max-length 2048 --gpu-memory 16GiB --max-batch-size 64 --trial-timeout 600 --force --format json)
summary() {
  python - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["search"]
print(sys.argv[1], "frontier", s["frontier"], "strategy", r["settings"]["strategy"], "env", r["settings"]["env"], "wall", s["wall_s"])
for t in s["trials"]:
    m = t.get("memory_stats") or {}
    ranks = m.get("ranks", [m])
    print("  ", t["settings"].get("per_device_train_batch_size"), t["settings"].get("env"), t["outcome"], t["peak_bytes"],
          [(x.get("alloc_retries"), x.get("steady_alloc_retries"), x.get("reserved_gap_bytes")) for x in ranks])
PY
}
for mode in off on auto; do
  python -m autotune probe "${COMMON[@]}" --isolate --expandable-segments $mode --out "$OUT/cluster-es-$mode.yaml" > "$OUT/cluster-es-$mode.json"
  summary "$OUT/cluster-es-$mode.json"
done
# A worker killed mid-trial (test hook), then a resume from the journal.
rm -f "$OUT/killed-once"
AUTOTUNE_TEST_FAULT="kill:2:$OUT/killed-once" python -m autotune probe "${COMMON[@]}" --isolate --expandable-segments off \
    --out "$OUT/cluster-killed.yaml" > "$OUT/cluster-killed.json"
summary "$OUT/cluster-killed.json"
python -m autotune probe "${COMMON[@]}" --isolate --expandable-segments off --resume --out "$OUT/cluster-es-off.yaml" \
    > "$OUT/cluster-resumed.json" 2> "$OUT/cluster-resumed.err"
grep "taken from the journal" "$OUT/cluster-resumed.err"
strategies=ddp,fsdp
python -c "import deepspeed" 2>/dev/null && strategies=$strategies,zero2,zero3
python -m autotune probe "${COMMON[@]}" --nproc-per-node 1 --strategy $strategies --expandable-segments off \
    --out "$OUT/cluster-strategies.yaml" > "$OUT/cluster-strategies.json"
summary "$OUT/cluster-strategies.json"
