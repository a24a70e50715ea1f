"""The probe's frontier equals brute force (every batch size tried) on real tiny models."""

import pytest

from autotune.probe import ProgressSink, find_frontier
from autotune.trials.trial import InProcessRunner, run_train_trial

MiB = 2**20


def brute_force(workload, budget, limit):
    outcomes = [run_train_trial(workload, b, 3, budget).outcome for b in range(1, limit + 1)]
    frontier = 0
    for b, outcome in enumerate(outcomes, 1):
        if outcome != "fit":
            break
        frontier = b
    assert all(o != "fit" for o in outcomes[frontier:]), f"fits are not a prefix: {outcomes}"
    return frontier


@pytest.mark.parametrize("name,capacity,train_type", [
    ("tiny-llama", 14 * MiB, "full"),
    ("tiny-llama", 9 * MiB, "full"),
    ("tiny-llama", 15 * MiB, "lora"),
    ("tiny-qwen2", 18 * MiB, "full"),
    ("tiny-gpt2", 12 * MiB, "full"),
    ("tiny-mistral", 18 * MiB, "full"),
])
def test_frontier_matches_brute_force(make_workload, name, capacity, train_type):
    workload = make_workload(name, capacity, max_length=64, train_type=train_type)
    budget = int(capacity * 0.9)
    trials = []
    search = find_frontier(InProcessRunner(workload, 3, budget), "train", {}, budget, 32, ProgressSink(), trials)
    truth = brute_force(workload, budget, min(search.frontier + 3, 32))
    assert 1 <= truth < 32, "pick budgets that give an interior frontier"
    assert search.frontier == truth
    assert len(trials) <= 5
    fits = {t.batch_size for t in trials if t.fits}
    misses = {t.batch_size for t in trials if t.outcome in ("oom", "over_budget")}
    assert truth in fits and truth + 1 in misses


def test_gradient_checkpointing_raises_the_frontier(make_workload):
    budget = int(20 * MiB * 0.9)
    workload = make_workload("tiny-llama", 20 * MiB, max_length=128)
    runner = InProcessRunner(workload, 3, budget)
    f_plain = find_frontier(runner, "train", {"gradient_checkpointing": False}, budget, 64, ProgressSink(), []).frontier
    f_gc = find_frontier(runner, "train", {"gradient_checkpointing": True}, budget, 64, ProgressSink(), []).frontier
    assert f_gc > f_plain >= 1


def test_switching_checkpointing_off_again_measures_what_a_fresh_model_does(make_workload):
    """The space search switches checkpointing in place. Turning it on for a LoRA model makes the
    frozen embeddings' output require grad; turning it off must undo that, or every candidate
    measured afterwards without checkpointing carries the extra activation gradient."""
    workload = make_workload("tiny-llama", 64 * MiB, max_length=32, train_type="lora")
    fresh = run_train_trial(workload, 2, 3, 64 * MiB).peak_bytes
    workload.configure(gradient_checkpointing=True)
    checkpointed = run_train_trial(workload, 2, 3, 64 * MiB).peak_bytes
    workload.configure(gradient_checkpointing=False)
    assert checkpointed < fresh
    assert run_train_trial(workload, 2, 3, 64 * MiB).peak_bytes == fresh
