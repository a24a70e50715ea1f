"""The search over partial checkpointing's N, pure logic (no torch).

For a per-device batch that does not fit without checkpointing but fits with it, the fastest
checkpointing that fits is the one that checkpoints the fewest layers: at one batch, each layer
recomputed adds a forward through it. So the question per batch is not a frontier but the
first mode of a ladder (most memory and fastest first: every 32nd layer, every 16th, ..., every
2nd) that fits. Memory is monotone along the ladder (each mode keeps fewer activations than the
one before) and in the batch, so:
- per batch, a bisection over the ladder (a mode that fits means every later one fits);
- across batches taken in ascending order, the first fitting mode can only move later, so each
  bisection starts where the previous batch's answer was.
"""

from __future__ import annotations

from typing import Callable


def cheapest_fitting(batches: list[int], ladder: list, fits: Callable[[int, object], bool]) -> dict[int, object | None]:
    """For each batch, the first entry of `ladder` that fits it (`fits(batch, entry)`, one trial
    each), or None when none does. Assumes monotone memory (see the module docstring)."""
    found: dict[int, object | None] = {}
    low = 0
    for batch in sorted(batches):
        lo, hi = low, len(ladder)  # hi: "none fits" until a trial says otherwise
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(batch, ladder[mid]):
                hi = mid
            else:
                lo = mid + 1
        found[batch] = ladder[lo] if lo < len(ladder) else None
        low = lo
    return found
