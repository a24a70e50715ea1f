"""Benchmark (not a test), issue #15: what each memory lever does to the train frontier of a tiny
model with a large vocabulary, on the sim device, and what the search costs against a grid.

1. The frontier (largest per-device batch that fits) of every checkpointing mode and lever:
   off, every-N for each N of the ladder, on, on+offload, and packing -- each found by the probe's
   own frontier search through the real Trainer.
2. The search of `--gradient-checkpointing partial --activation-offloading search` (the space's
   trials, no validation) against the grid it replaces: every mode at every per-device batch the
   global batch admits, each decided by a trial. The memory decisions are compared exactly (which
   mode fits which batch); throughput is CPU timing on a shared machine, so it is printed, not judged.

    python scripts/bench_levers.py                    # defaults below
    python scripts/bench_levers.py --json out/bench_levers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.recipe import levers  # noqa: E402
from autotune.devices import SimDevice  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.probe import ProgressSink, find_frontier  # noqa: E402
from autotune.sizes import format_size, parse_size  # noqa: E402
from autotune.search.space import SearchSpace  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials.trial import InProcessRunner  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 16384,
          "max_position_embeddings": 512, "tie_word_embeddings": False, "rms_norm_eps": 1e-6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-memory", default="48MiB")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    ap.add_argument("--vocab", type=int, default=CONFIG["vocab_size"])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    capacity = parse_size(args.gpu_memory)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({**CONFIG, "num_hidden_layers": args.layers, "vocab_size": args.vocab}))
        spec = ProbeSpec(max_length=args.max_length, model_config=str(config), device="sim", gpu_memory=capacity,
                         global_batch_size=args.global_batch_size, max_batch_size=args.max_batch_size,
                         attn_candidates=("sdpa",), every_n_layers=levers.PARTIAL, activation_offloading=(False, True),
                         eval=False)
        device = SimDevice(capacity)
        workload = load_workload(resolve(None, str(config)), spec, device)
        budget = int(capacity * spec.usable_fraction)
        runner = InProcessRunner(workload, spec.steps, budget)
        layers = levers.checkpointed_layer_count(workload.model)
        modes = {"off": {"gradient_checkpointing": False}}
        for n in levers.every_n_ladder(layers):
            modes[f"every-{n}"] = {"gradient_checkpointing": True, "checkpoint_every_n_layers": n}
        modes["on"] = {"gradient_checkpointing": True}
        modes["on+offload"] = {"gradient_checkpointing": True, "activation_offloading": True}
        modes["packing"] = {"gradient_checkpointing": False, "packing": True}

        print(f"tiny llama: {layers} layers, hidden {CONFIG['hidden_size']}, vocab {args.vocab}, max_length {args.max_length}; "
              f"sim {format_size(capacity)} (budget {format_size(budget)})")
        frontiers = {}
        for name, mode in modes.items():
            found: list = []
            search = find_frontier(runner, "train", {"attn_implementation": "sdpa", **mode}, budget, args.max_batch_size,
                                   ProgressSink(), found)
            peak = max((t.peak_bytes for t in found if t.fits and t.settings["per_device_train_batch_size"] == search.frontier),
                       default=None)
            frontiers[name] = {"frontier": search.frontier, "trials": len(found), "peak_at_frontier": peak}
            print(f"  {name:<12} frontier {search.frontier:>3}  ({len(found)} trials)  peak there {format_size(peak)}")

        space = SearchSpace(spec, runner, device, budget, ProgressSink(), find_frontier)
        started = time.perf_counter()
        space.search_train()
        search_s = time.perf_counter() - started
        grid_points = [(name, b) for name in modes if name != "packing" for b in space.reachable()]
        chosen = space.ranked()[0] if space.ranked() else None
        print(f"search: {len(space.trials)} trials in {search_s:.0f} s (measured under load); "
              f"grid: {len(grid_points)} points ({len(modes) - 1} modes x {len(space.reachable())} batches)")
        for c in space.candidates:
            best = c.best()
            print(f"  {levers.describe(c.base):<12} {c.status:<9} frontier {c.frontier if c.frontier is not None else '-':>3}  "
                  f"{c.trials} trials  " + (f"best batch {best.per_device_train_batch_size}: {best.tokens_per_s:,.0f} tok/s"
                                            if best else (c.reason or "")))
        if chosen:
            print(f"chosen: {levers.describe(chosen.settings)}, batch {chosen.per_device_train_batch_size} x "
                  f"{chosen.gradient_accumulation_steps}, {chosen.tokens_per_s:,.0f} tok/s")
        result = {"config": {**CONFIG, "num_hidden_layers": layers, "vocab_size": args.vocab}, "max_length": args.max_length,
                  "capacity_bytes": capacity, "frontiers": frontiers, "search_trials": len(space.trials),
                  "grid_points": len(grid_points), "candidates": [c.row() for c in space.candidates],
                  "chosen": chosen.settings if chosen else None}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
