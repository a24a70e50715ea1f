"""The per-device batches a probe's objective admits: those that keep the target global batch
(per-device x accumulation x world size), within --max-batch-size, and for an RLHF run only
those its rules allow (recipe/rlhf.py: whole groups of completions). Pure functions of the
spec; the search space (search/space.py) asks them which batches to search and time.
"""

from __future__ import annotations

from .global_batch import exact_splits, split_global_batch


def accumulation(spec, batch: int) -> dict:
    """The accumulation a run at this per-device batch uses to keep the global batch. It is
    part of what is probed: the Trainer fetches (and moves to the device) every micro-batch
    of an optimizer step before the first forward, so they are all resident at once."""
    if spec.global_batch_size is None:
        return {"gradient_accumulation_steps": 1}
    return {"gradient_accumulation_steps": max(1, round(spec.global_batch_size / (batch * spec.world_size)))}


def allowed(spec, batches: list[int]) -> list[int]:
    """The batches an RLHF run's rules admit (recipe/rlhf.py: whole groups of completions)."""
    rlhf = spec.rlhf
    if rlhf is None:
        return batches
    return [b for b in batches if rlhf.train_allowed(b, accumulation(spec, b)["gradient_accumulation_steps"], spec.world_size)]


def reachable(spec) -> list[int]:
    """Per-device batches the objective admits at any frontier (up to --max-batch-size)."""
    if spec.global_batch_size is None:
        return [spec.max_batch_size]
    splits = exact_splits(spec.global_batch_size, spec.max_batch_size, spec.world_size)
    return allowed(spec, splits or [split_global_batch(spec.global_batch_size, spec.max_batch_size, spec.world_size).per_device])


def to_measure(spec, frontier: int) -> list[int]:
    """Per-device batches <= frontier that split the global batch exactly (or the closest split
    when none does), largest first; without a global batch, the largest allowed one."""
    if spec.global_batch_size is None:
        return allowed(spec, list(range(frontier, 0, -1)))[:1]
    splits = exact_splits(spec.global_batch_size, frontier, spec.world_size)
    return sorted(allowed(spec, splits or [split_global_batch(spec.global_batch_size, frontier, spec.world_size).per_device]),
                  reverse=True)


def search_bound(spec) -> int:
    """The largest per-device batch a train frontier search needs to reach: above the largest
    batch the objective admits, no fit can change the choice (global batch 8 on one device: no
    run uses a per-device batch of 9). --max-batch-size when the objective admits none."""
    return max(reachable(spec), default=spec.max_batch_size)


def eval_allowed(spec, frontier: int) -> int:
    """The largest eval batch up to the frontier that the run's rules admit (GRPO: whole
    groups of completions across the ranks); 0 when none does."""
    rlhf = spec.rlhf
    return frontier if rlhf is None else rlhf.largest_eval_batch(frontier, spec.world_size)
