"""Benchmark: trials and wall time to the batch-size frontier — autotune's search against
accelerate's `find_executable_batch_size` and Lightning's `BatchSizeFinder` (binsearch), on the
same simulated-GPU workload, and the batch each settles on against the true frontier.

Fairness: the anchors know no margin, so they get a simulated card whose capacity *is*
autotune's usable budget; "no OOM" then means the same thing for all three. The true frontier
is found by brute force (every batch from 1 up to the first one that does not fit).

    python scripts/bench_search.py                 # all cases, writes out/bench_search.json
    python scripts/bench_search.py --cases tiny-llama:full
    python scripts/bench_search.py --plan-first    # adds autotune with the plan first (probe --plan-first)

Needs the `bench` extra for Lightning (pip install -e .[bench]); without it, that column is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.devices import SimDevice  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.progress import ProgressSink
from autotune.search.frontier import find_frontier  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials.step_model import train_steps  # noqa: E402
from autotune.trials.trial import InProcessRunner, run_train_trial  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402

MiB = 2**20
MARGIN = 0.10
STEPS = 3
# (config, train type, simulated capacity, max length): capacities chosen so frontiers are 20-60.
CASES = {
    "tiny-llama:full": ("tiny-llama", "full", 80 * MiB, 64),
    "tiny-qwen2:lora": ("tiny-qwen2", "lora", 96 * MiB, 64),
    "tiny-mistral:full": ("tiny-mistral", "full", 120 * MiB, 64),
}


def workload_for(name, train_type, capacity, max_length):
    spec = ProbeSpec(max_length=max_length, model_config=name, train_type=train_type, device="sim", gpu_memory=capacity,
                     steps=STEPS, margin=MARGIN)
    return load_workload(resolve(None, name), spec, SimDevice(capacity))


def brute_force(workload, budget):
    batch = 0
    while run_train_trial(workload, batch + 1, STEPS, budget).fits:
        batch += 1
    return batch


def bench_autotune(workload, budget):
    trials = []
    start = time.perf_counter()
    search = find_frontier(InProcessRunner(workload, STEPS, budget), "train", {}, budget, 256, ProgressSink(), trials)
    return {"settled": search.frontier, "trials": len(trials), "wall_s": time.perf_counter() - start,
            "tried": [t.batch_size for t in trials]}


def bench_autotune_planned(workload, budget):
    """`probe --plan-first` for this one candidate: the fake-tensor plan on the CPU (its train and
    eval frontiers, as a probe's plan makes them), then the search from the planned frontier. On
    a GPU machine the plan overlaps the model's load onto the card; here both run on the CPU, so
    the wall time is their sum (reported apart as plan_s and trials_s)."""
    from autotune.plan.hints import planned_hints

    spec = workload.spec.replace(attn_candidates=(workload.attn_implementation,), gradient_checkpointing_candidates=(False,))
    start = time.perf_counter()
    hints = planned_hints(spec, workload.device.capacity, budget)
    planned = time.perf_counter() - start
    hint = hints.get((workload.attn_implementation, False), {}).get("train")
    trials = []
    search = find_frontier(InProcessRunner(workload, STEPS, budget), "train", {}, budget, 256, ProgressSink(), trials, hint=hint)
    wall = time.perf_counter() - start
    return {"settled": search.frontier, "trials": len(trials), "wall_s": wall, "plan_s": planned, "trials_s": wall - planned,
            "planned_frontier": hint, "tried": [t.batch_size for t in trials]}


def bench_accelerate(workload, budget):
    from accelerate.utils import find_executable_batch_size

    workload.device.shrink(budget)  # an OOM at the budget: "no OOM" == "fits with autotune's margin"
    tried = []

    @find_executable_batch_size(starting_batch_size=128)
    def train(batch_size):
        tried.append(batch_size)
        train_steps(workload, batch_size, STEPS)  # a plain training loop, as accelerate users write
        return batch_size

    start = time.perf_counter()
    settled = train()
    return {"settled": settled, "trials": len(tried), "wall_s": time.perf_counter() - start, "tried": tried}


def bench_lightning(workload, budget):
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.tuner import Tuner
    except ImportError:
        return None
    from torch.utils.data import DataLoader, Dataset

    workload.device.shrink(budget)
    length, vocab = workload.spec.max_length, workload.vocab_size

    class Tokens(Dataset):
        def __len__(self):
            return 100_000

        def __getitem__(self, i):
            return torch.randint(0, vocab, (length,))

    class Wrapped(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = workload.model
            self.batch_size = 2
            self.tried = []

        def on_train_start(self):
            self.tried.append(self.batch_size)

        def training_step(self, batch, _):
            return self.model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss

        def configure_optimizers(self):
            return workload.make_optimizer()

        def train_dataloader(self):
            return DataLoader(Tokens(), batch_size=self.batch_size)

    module = Wrapped()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    with workload.device.tracking():
        settled = Tuner(trainer).scale_batch_size(module, mode="binsearch", steps_per_trial=STEPS, init_val=2)
    return {"settled": settled, "trials": len(module.tried), "wall_s": time.perf_counter() - start, "tried": module.tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--out", default="out/bench_search.json")
    parser.add_argument("--plan-first", action="store_true", help="add autotune with the plan first (probe --plan-first)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for case in args.cases.split(","):
        name, train_type, capacity, length = CASES[case]
        budget = int(capacity * (1 - MARGIN))
        truth = brute_force(workload_for(*CASES[case]), budget)
        row = {"case": case, "capacity_bytes": capacity, "budget_bytes": budget, "max_length": length, "true_frontier": truth}
        tools = [("autotune", bench_autotune), ("accelerate", bench_accelerate), ("lightning_binsearch", bench_lightning)]
        if args.plan_first:
            tools.insert(1, ("autotune_plan_first", bench_autotune_planned))
        for tool, fn in tools:
            result = fn(workload_for(*CASES[case]), budget)  # a fresh model and device per tool
            row[tool] = result
            if result:
                parts = f" (plan {result['plan_s']:.1f}s + trials {result['trials_s']:.1f}s)" if "plan_s" in result else ""
                print(f"{case:<18} {tool:<20} settled {result['settled']:>4} (true {truth:>3})  "
                      f"trials {result['trials']:>3}  wall {result['wall_s']:6.1f}s{parts}", flush=True)
        rows.append(row)
    meta = {"torch": str(torch.__version__), "margin": MARGIN, "steps_per_trial": STEPS, "load_average": os.getloadavg(),
            "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
