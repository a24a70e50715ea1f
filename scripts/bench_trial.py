"""Benchmark: the wall time of a trial through the real Trainer against the hand-written step
loop it replaced (autotune/trial.py at commit bb6a21c, loaded from git), for the same steps on
the sim device. Issue #11 allows the Trainer trial at most 1.5x the old time.

    python scripts/bench_trial.py                   # writes out/bench_trial.json
    python scripts/bench_trial.py --repeats 10 --cases tiny-llama:full

Each case builds one workload; both runners alternate on it (old, new, old, new, ...) so load
drift hits both alike; the first trial of each (warm-up: lazy imports, the first Trainer) is
dropped. Needs git and the repository's history.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autotune.devices import SimDevice  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials.trial import run_trial  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402

OLD_COMMIT = "bb6a21c"
MiB = 2**20
# (config, train type, max length, train batch, eval batch)
CASES = {
    "tiny-llama:full": ("tiny-llama", "full", 128, 4, 4),
    "tiny-qwen2:lora": ("tiny-qwen2", "lora", 128, 4, 4),
}


def old_trial_module():
    """The replaced trial.py, imported as a module of the autotune package (its relative imports resolve)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:autotune/trial.py"], check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("from .recipe import", "from .recipe.schema import")  # where it lives since issue #17
    spec = importlib.util.spec_from_loader("autotune._trial_before_trainer", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "autotune"
    exec(compile(source, f"{OLD_COMMIT}:autotune/trial.py", "exec"), module.__dict__)
    return module


def old_step_then_eval(old, workload, train_batch: int, eval_settings: dict):
    step = old.run_trial(workload, "train", {"per_device_train_batch_size": train_batch}, 1, 2**34)
    assert step.outcome == "fit", step.message
    return old.run_trial(workload, "eval", eval_settings, 4, 2**34)


def timed(fn) -> float:
    start = time.perf_counter()
    result = fn()
    assert result.outcome == "fit", result.message
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="out/bench_trial.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    old = old_trial_module()
    rows = []
    for case in args.cases.split(","):
        name, train_type, length, train_batch, eval_batch = CASES[case]
        spec = ProbeSpec(max_length=length, model_config=name, train_type=train_type, device="sim", gpu_memory=2**34)
        workload = load_workload(resolve(None, name), spec, SimDevice(2**34))
        eval_settings = {"per_device_eval_batch_size": eval_batch, "prediction_loss_only": False, "eval_outputs": "logits",
                         "eval_accumulation_steps": 4}
        runs = {
            "train": (lambda: old.run_trial(workload, "train", {"per_device_train_batch_size": train_batch}, args.steps, 2**34),
                      lambda: run_trial(workload, "train", {"per_device_train_batch_size": train_batch}, args.steps, 2**34)),
            "eval": (lambda: old.run_trial(workload, "eval", eval_settings, 4, 2**34),
                     lambda: run_trial(workload, "eval", eval_settings, 4, 2**34)),
            # The same work: today's eval trial trains one optimizer step first (the optimizer
            # state resident, as at a mid-training evaluation), so the old loop runs one too.
            "train 1 + eval": (lambda: old_step_then_eval(old, workload, train_batch, eval_settings),
                               lambda: run_trial(workload, "eval", {"per_device_train_batch_size": train_batch, **eval_settings}, 4, 2**34)),
        }
        for phase, (before, now) in runs.items():
            times = {"before": [], "trainer": []}
            for _ in range(args.repeats + 1):
                times["before"].append(timed(before))
                times["trainer"].append(timed(now))
            medians = {k: statistics.median(v[1:]) for k, v in times.items()}
            ratio = medians["trainer"] / medians["before"]
            rows.append({"case": case, "phase": phase, "median_s": medians, "ratio": round(ratio, 3), "times_s": times})
            print(f"{case:<16} {phase:<14} before {medians['before']:.3f}s  trainer {medians['trainer']:.3f}s  "
                  f"ratio {ratio:.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": str(torch.__version__), "old_commit": OLD_COMMIT, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
