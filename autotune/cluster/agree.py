"""Decide one trial's outcome from every rank's report: pure logic, no torch.

Every rank runs the same trial. The trial fits only if it fits everywhere: any rank out of
memory makes it `oom`; the peak is the maximum over ranks (a smaller card in the pool decides).
A rank whose worker was ended because a peer failed reports `aborted`: it says nothing about
memory, so it never decides the outcome when another rank has a reason.
"""

from __future__ import annotations

from ..recipe.schema import TrialResult

# Most telling first: an OOM on one rank explains the peers that hung behind it in a collective.
PRECEDENCE = ("oom", "crashed", "timeout", "error", "over_budget", "fit")


def agree(reports: list[TrialResult]) -> TrialResult:
    """One TrialResult for the trial from the per-rank reports (index = rank)."""
    if len(reports) == 1:
        return reports[0]
    outcomes = [r.outcome for r in reports]
    outcome = next((o for o in PRECEDENCE if o in outcomes), "crashed")  # all aborted: nobody knows why
    peaks = [r.peak_bytes for r in reports if r.peak_bytes is not None]
    times = [r.step_time_s for r in reports if r.step_time_s is not None]
    ran = outcome in ("fit", "over_budget")
    step_time = max(times) if ran and times else None  # the slowest rank sets the pace
    base = reports[0]
    tokens = base.tokens_per_s * base.step_time_s / step_time if ran and step_time and base.tokens_per_s and base.step_time_s else None
    messages = [f"rank {i}: {r.message}" for i, r in enumerate(reports) if r.message and r.outcome != "fit"]
    return TrialResult(
        phase=base.phase, settings=base.settings, outcome=outcome, peak_bytes=max(peaks) if peaks else None,
        step_time_s=step_time, tokens_per_s=tokens, steps=min(r.steps for r in reports),
        wall_s=max(r.wall_s for r in reports), message="; ".join(messages) or None,
        leaked_bytes=max((r.leaked_bytes or 0 for r in reports), default=0) or None,
        memory_stats={"ranks": [{"outcome": r.outcome, "peak_bytes": r.peak_bytes, **(r.memory_stats or {})} for r in reports]},
    )
