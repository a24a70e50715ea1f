"""Benchmark (not a test), issue #3: the probe's chosen configuration against the best of an
exhaustive grid over the same space, on the sim device.

The space: attention (sdpa, eager) x gradient checkpointing (off, on) x every per-device batch
that splits the global batch exactly. The probe searches it with pruning; the grid runs every
point. Then the chosen configuration and every grid point that fits are timed the SAME way --
`--repeats` rounds, round-robin over the configurations so load drift hits all alike, each round
a train trial of `--steps` steps -- and the chosen one's median throughput is compared with the
best median. CPU timings of tiny models are noisy (more so on a shared machine): the spread
(min..max over rounds) is printed beside each median.

    python scripts/bench_space.py                       # defaults below
    python scripts/bench_space.py --json out/bench_space.json
    python scripts/bench_space.py --trials-only [--plan-first]   # trials to the recipe, no grid (issue #13)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.devices import SimDevice  # noqa: E402
from autotune.search.global_batch import exact_splits  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.probe import probe  # noqa: E402
from autotune.sizes import parse_size  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials.trial import run_trial  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-config", default="tiny-llama")
    ap.add_argument("--gpu-memory", default="17MiB")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--global-batch-size", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="steps per timing round")
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds per configuration")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plan-first", action="store_true", help="the probe plans under fake tensors first (probe --plan-first)")
    ap.add_argument("--trials-only", action="store_true", help="count the probe's trials and stop (no grid, no timing)")
    args = ap.parse_args()
    capacity = parse_size(args.gpu_memory)
    spec = ProbeSpec(max_length=args.max_length, model_config=args.model_config, device="sim", gpu_memory=capacity,
                     global_batch_size=args.global_batch_size, max_batch_size=args.max_batch_size,
                     attn_candidates=("sdpa", "eager"), validate_steps=3, plan_first="on" if args.plan_first else "off")

    started = time.perf_counter()
    recipe = probe(spec, device=SimDevice(capacity))
    probe_s = time.perf_counter() - started
    s = recipe.settings
    chosen = (s.attn_implementation, s.gradient_checkpointing, s.per_device_train_batch_size)
    search_trials = [t for t in recipe.search.trials if t.purpose != "validate"]
    if args.trials_only:
        frontiers = {f"{c['attn_implementation']}/gc-{'on' if c['gradient_checkpointing'] else 'off'}":
                     (">=" if c.get("frontier_bound") else "") + str(c["frontier"]) for c in recipe.search.candidates}
        print(f"plan first: {'on' if args.plan_first else 'off'}; probe trials: {len(search_trials)} search ({_phases(recipe)}) "
              f"+ {recipe.search.phases.get('validate', {}).get('trials', 0)} validation; frontiers {frontiers}, "
              f"eval {recipe.search.frontier.get('eval')}; chosen {chosen}; probe wall {probe_s:.0f}s")
        return 0

    # The grid, on a fresh model: every point's fit decided by a trial.
    workload = load_workload(resolve(None, args.model_config), spec, SimDevice(capacity))
    budget = recipe.search.budget_bytes
    splits = exact_splits(args.global_batch_size, args.max_batch_size, 1)
    grid = [(a, g, b) for a in ("sdpa", "eager") for g in (False, True) for b in splits]
    fits = []
    for attn, gc, batch in grid:
        result = run_trial(workload, "train", _settings(attn, gc, batch), 3, budget)
        if result.fits:
            fits.append((attn, gc, batch))
    eval_grid = args.max_batch_size * 2  # every eval batch 1..max, for each attention implementation

    # Time the chosen configuration and every fitting grid point the same way.
    rounds: dict[tuple, list[float]] = {c: [] for c in fits}
    rounds.setdefault(chosen, [])
    for _ in range(args.repeats):
        for config in rounds:
            rounds[config].append(run_trial(workload, "train", _settings(*config), args.steps, budget).tokens_per_s)
    medians = {c: statistics.median(v) for c, v in rounds.items()}
    best = max(fits, key=lambda c: medians[c])
    ratio = medians[chosen] / medians[best]

    print(f"{'attn':6} {'gc':3} {'batch':>5} {'tok/s median':>12}  spread")
    for config in sorted(rounds, key=lambda c: -medians[c]):
        mark = " <- chosen" if config == chosen else (" <- grid best" if config == best else "")
        v = rounds[config]
        print(f"{config[0]:6} {'on' if config[1] else 'off':3} {config[2]:>5} {medians[config]:>12,.0f}  {min(v):,.0f}..{max(v):,.0f}{mark}")
    print(f"chosen {chosen}: {100 * ratio:.1f}% of the grid's best {best} (goal >= 97%)")
    print(f"probe trials: {len(search_trials)} search ({_phases(recipe)}) + validation; "
          f"grid: {len(grid)} train points + {eval_grid} eval points = {len(grid) + eval_grid}; probe wall {probe_s:.0f}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "chosen": chosen, "grid_best": best, "ratio": ratio, "search_trials": len(search_trials),
            "phases": recipe.search.phases, "grid_train_points": len(grid), "grid_eval_points": eval_grid,
            "rounds": {repr(c): v for c, v in rounds.items()}, "candidates": recipe.search.candidates,
        }, indent=2, default=str))
    return 0


def _settings(attn: str, gc: bool, batch: int) -> dict:
    return {"attn_implementation": attn, "gradient_checkpointing": gc, "per_device_train_batch_size": batch}


def _phases(recipe) -> str:
    phases = ", ".join(f"{k} {v['trials']}" for k, v in recipe.search.phases.items() if k != "validate")
    return f"{phases}; of the throughput trials, {_retimed(recipe)} re-timed by the runoff"


def _retimed(recipe) -> int:
    """Throughput trials at settings already timed (a runoff round): a fit of the same train settings
    before it, at least as long."""
    seen, again = [], 0
    for t in recipe.search.trials:
        if t.phase != "train" or not t.fits or not t.tokens_per_s:
            continue
        key = tuple(sorted((k, str(v)) for k, v in t.settings.items()))
        if t.purpose == "throughput" and any(k == key and steps >= t.steps for k, steps in seen):
            again += 1
        seen.append((key, t.steps))
    return again


if __name__ == "__main__":
    sys.exit(main())
