"""Plan time and peak RAM for 0.5B, 7B and 70B configs (issues #7, #13), one process per config
so each peak RSS is its own. Prints one line per run; docs/benchmarks.md records the output.
Importing torch, transformers and autotune is timed once on its own (a fresh process), and the
plan reports the imports it makes itself (the model's modeling code, the Trainer: `import_s`), so
plan time and import time are reported apart; CPU seconds beside wall seconds, the comparable
figure on a shared machine.

    python scripts/bench_plan.py [--max-length 2048] [--train-type full] [--full-depth]
    python scripts/bench_plan.py --configs qwen2.5-vl-7b --max-length 4096 --gradient-checkpointing on \
        --extra="--max-pixels 1003520"      # vision-language: 1280 image tokens
    python scripts/bench_plan.py --count-operators   # also the operators the plan sends the fake mode

On a shared machine CPU seconds still swing with the load (the cores' caches and hyperthreads
are shared); `--count-operators` adds a figure that does not: how many operators the plan's
fake-tensor steps dispatch (a plan's time is about that many times the fake mode's cost per
operator, 0.1-0.2 ms here; counting adds a little time of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

CONFIGS = ("qwen2.5-0.5b", "qwen2.5-7b", "llama-3-70b")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-length", default="2048")
    parser.add_argument("--train-type", default="full")
    parser.add_argument("--gradient-checkpointing", default="off")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--extra", default="", help="more plan flags, e.g. --extra='--max-pixels 1003520'")
    parser.add_argument("--full-depth", action="store_true", help="every layer under fake tensors (no shallow copies)")
    parser.add_argument("--count-operators", action="store_true", help="count the operators the fake mode dispatches")
    args = parser.parse_args()
    started, before = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-c", "import torch, transformers, peft, accelerate, autotune.plan.planner"], check=True,
                   capture_output=True)
    print(f"import torch, transformers, peft, accelerate, autotune.plan.planner: {time.perf_counter() - started:.1f}s, "
          f"cpu {_children_cpu() - before:.1f}s (fresh process); {os.getloadavg()[0]:.1f} load average")
    for name in args.configs.split(","):
        run = [sys.executable, "-c", COUNTING] if args.count_operators else [sys.executable, "-m", "autotune"]
        cmd = [*run, "plan", "--model-config", f"recipes/configs/{name}/config.json",
               "--max-length", args.max_length, "--train-type", args.train_type, "--gradient-checkpointing",
               args.gradient_checkpointing, "--gpu-memory", "80GiB", "--format", "json", "--quiet", *shlex.split(args.extra),
               *(["--full-depth"] if args.full_depth else [])]
        started, before = time.perf_counter(), _children_cpu()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - started, _children_cpu() - before
        if done.returncode:
            print(f"{name}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}")
            continue
        plan = json.loads(done.stdout)
        operators = next((line.split()[-1] for line in done.stderr.splitlines() if line.startswith("fake-mode operators")), None)
        c = plan["candidates"][0]
        peaks = {b: round(p / 2**30, 2) for b, p in sorted(c["train_peaks"].items(), key=lambda kv: int(kv[0]))}
        p = c["predictions"][0]
        print(f"{name:<14} {args.train_type} len {args.max_length} gc {args.gradient_checkpointing}: "
              f"process {wall:.1f}s, cpu {cpu:.1f}s; plan {plan['wall_s'] - plan['import_s']:.1f}s, cpu "
              f"{plan['cpu_s'] - plan['import_cpu_s']:.1f}s without its {plan['import_s']:.1f}s of imports "
              f"(cpu {plan['import_cpu_s']:.1f}s); peak RSS {plan['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"params {plan['model']['num_parameters'] / 1e9:.2f}B, train peak GiB by batch {peaks}, "
              f"80GiB frontier train {p['train_frontier']} ({p['train_trials']} trials) eval {p['eval_frontier']} "
              f"({p['eval_trials']} trials); {plan['depth']}; load average {os.getloadavg()[0]:.1f}"
              + (f"; {int(operators):,} fake-mode operators" if operators else ""))


# `autotune plan` with every operator the fake mode dispatches counted (prim.device included
# where the mode sees it); the count goes to stderr.
COUNTING = """
import sys
from torch._subclasses.fake_tensor import FakeTensorMode
from autotune.cli import main
calls, dispatch = [0], FakeTensorMode.__torch_dispatch__
def counted(self, func, types, args=(), kwargs=None):
    calls[0] += 1
    return dispatch(self, func, types, args, kwargs)
FakeTensorMode.__torch_dispatch__ = counted
sys.argv = ["autotune", *sys.argv[1:]]
try:
    code = main()
finally:
    print("fake-mode operators", calls[0], file=sys.stderr)
sys.exit(code)
"""


def _children_cpu() -> float:
    """CPU seconds of finished child processes: on a shared machine, what the plan itself cost."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
