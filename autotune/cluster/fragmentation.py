"""Fragmentation on CUDA: the caching allocator's retries and the reserved-vs-allocated gap.

When a cudaMalloc fails the allocator frees its cached blocks and retries (`num_alloc_retries`).
A run whose steady state needs retries does not OOM, but it thrashes: every retried step
synchronises and returns memory to the driver (Composer #1632, #1998). So a trial that needed
retries after its first step is not a fit, even under the budget.

`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` lets segments grow instead of fragmenting;
it must be set before CUDA initialises, so it is probed in a fresh worker and, when it raises
the frontier, it goes into the recipe's `settings.env`.
"""

from __future__ import annotations

import dataclasses

from ..recipe.schema import TrialResult

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = {ALLOC_CONF: "expandable_segments:True"}


def apply_steady_state_rule(result: TrialResult) -> TrialResult:
    """A fit that needed allocator retries after step 1 becomes `over_budget`."""
    stats = result.memory_stats or {}
    retries = stats.get("steady_alloc_retries") or 0
    if result.outcome != "fit" or retries <= 0:
        return result
    return dataclasses.replace(result, outcome="over_budget",
                               message=f"the caching allocator retried {retries} time(s) after the first step (fragmentation)")


def allocator_gap(stats: dict) -> int | None:
    """Reserved minus allocated peak: memory the allocator holds but the tensors do not use."""
    if "reserved_peak_bytes" not in stats or "allocated_peak_bytes" not in stats:
        return None
    return stats["reserved_peak_bytes"] - stats["allocated_peak_bytes"]


def wants_expandable(without: int, with_expandable: int) -> bool:
    """Put expandable_segments in the recipe only when it raised the frontier."""
    return with_expandable > without
