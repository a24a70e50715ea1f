"""Evidence for issue #11: recipes made by an older autotune (default: the commit before trials
ran the Trainer), judged by the launched Trainer as tests/test_trainer_oracle.py judges today's.

For each case of the oracle test, the old code probes in a git worktree of OLD_COMMIT (run as
its own process, with that worktree first on the path), writes its recipe, and this process
runs the user's Trainer at that recipe's settings under the sim device at its usable budget.

    python scripts/oracle_old_recipes.py                  # all cases
    python scripts/oracle_old_recipes.py --commit bb6a21c --cases full

Prints one line per case: whether the old recipe held or where it ran out of memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PROBE = """
import sys, json
from autotune.probe import probe
from autotune.recipe.schema import save_recipe
from autotune.spec import ProbeSpec
case = json.loads(sys.argv[1])
capacity = case.pop("capacity")
spec = ProbeSpec(device="sim", gpu_memory=capacity, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,),
                 validate_steps=4, **case)
save_recipe(probe(spec), sys.argv[2])
"""


def main() -> None:
    import json

    import torch

    from autotune.devices import SimDevice
    from autotune.recipe.schema import load_recipe
    from autotune.spec import ProbeSpec
    from test_trainer_oracle import CASES, launched

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="bb6a21c")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.commit], check=True,
                       capture_output=True)
        try:
            for name in args.cases.split(","):
                out = Path(tmp) / f"{name}.yaml"
                subprocess.run([sys.executable, "-c", PROBE, json.dumps(CASES[name]), str(out)], check=True, cwd=tmp,
                               env={**__import__("os").environ, "PYTHONPATH": str(tree)}, capture_output=True)
                recipe = load_recipe(out)
                case = {k: v for k, v in CASES[name].items() if k != "capacity"}
                spec = ProbeSpec(device="sim", gpu_memory=recipe.hardware.capacity_bytes, **case)
                s, budget = recipe.settings, recipe.search.budget_bytes
                head = f"{name:<17} {args.commit}: train {s.per_device_train_batch_size}, eval {s.per_device_eval_batch_size}"
                try:
                    peak = launched(recipe, spec, SimDevice(budget), tmp=Path(tmp) / "trainer")
                    print(f"{head}: held in the launched Trainer (peak {peak} <= budget {budget})", flush=True)
                except torch.OutOfMemoryError as exc:
                    print(f"{head}: OOM in the launched Trainer ({str(exc).split('. ')[0]}; budget {budget})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
