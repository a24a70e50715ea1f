"""The plan's frontier, found the way the probe finds it: measure, predict, measure at the
prediction, close to adjacency (search.FrontierSearch), with fake-tensor steps for trials.

A fake-tensor step costs the same at batch 256 as at batch 1, so nothing is extrapolated: the
frontier is a fit measured at k and a non-fit at k + 1, as a probe on the same card would
measure them. What the two first steps give is the starting point. Every allocation of a step
happens at batch 1 and at batch 2 in the same order, and the live bytes after each one are
affine in the batch size; so the peak at any batch is the largest of those lines (their upper
envelope), not the one line through the two peaks. Where the peak sits in a batch-independent
moment at small batches (a large vocabulary's logits under checkpointing), the line through
the peaks overstates the frontier several-fold; the envelope sees the activations that overtake
it. Where the steps differ in their allocations (the sequence of events is not the same), the
line through the peaks is the starting point instead, and the search still ends exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from .breakdown import Allowance, largest_batch
from ..search.frontier import FrontierSearch, run_search

# Batch 1 is no seed: some operators return a view for a batch of one where they copy for more,
# so its step allocates in a different order (seen in Llama's forward) and no envelope forms.
SEED_BATCHES = (2, 3)


@dataclass
class Envelope:
    """Upper envelope of per-allocation lines between two timelines of the same step."""

    base: list  # live bytes after each allocation at batch b0
    slope: list  # their growth per sample
    b0: int

    @classmethod
    def between(cls, b0: int, t0: list, b1: int, t1: list) -> "Envelope | None":
        if len(t0) != len(t1) or not t0:  # a phase that allocates nothing has its peak on its line
            return None
        import numpy as np

        base, other = np.asarray(t0, dtype=np.float64), np.asarray(t1, dtype=np.float64)
        return cls(base, (other - base) / (b1 - b0), b0)

    def at(self, batch: int) -> float:
        return float((self.base + self.slope * (batch - self.b0)).max())


def _line(b0: int, p0: float, b1: int, p1: float):
    slope = (p1 - p0) / (b1 - b0)
    return lambda batch: p0 + slope * (batch - b0)


def _phases(steps):
    """(forward/backward(batch), optimizer step(batch), allocated in the same order) predicted
    from the seed steps; over shallow copies (plan/depth.py), each copy's curve extended."""
    parts = getattr(steps, "parts", None)
    if parts:
        curves = [_phases(part) for part in parts]
        return (lambda b: steps.extend(*(c[0](b) for c in curves)), lambda b: steps.extend(*(c[1](b) for c in curves)),
                all(c[2] for c in curves))
    (b0, p0), (b1, p1) = ((b, steps.train_points[b]) for b in SEED_BATCHES)
    forward = Envelope.between(b0, p0.timeline[:p0.split], b1, p1.timeline[:p1.split])
    step = Envelope.between(b0, p0.timeline[p0.split:], b1, p1.timeline[p1.split:])
    forward_at = forward.at if forward else _line(b0, p0.forward_backward, b1, p1.forward_backward)
    step_at = step.at if step else _line(b0, p0.step, b1, p1.step)
    return forward_at, step_at, len(p0.timeline) == len(p1.timeline) and p0.split == p1.split


def train_curve(steps, shift_forward_backward: float = 0.0, shift_step: float = 0.0):
    """The predicted per-rank train peak at any batch, each phase shifted by what the rank does
    not hold (sharding; 0 on one device), and whether it came from the envelope (else: lines)."""
    forward_at, step_at, exact = _phases(steps)
    return (lambda batch: max(forward_at(batch) + shift_forward_backward, step_at(batch) + shift_step)), exact


def _eval(steps, after: tuple):
    parts = getattr(steps, "parts", None)
    if parts:
        curves = [_eval(part, after) for part in parts]
        return lambda b: steps.extend(*(c[0](b) for c in curves)), all(c[1] for c in curves)
    (b0, p0), (b1, p1) = ((b, steps.eval_points[(*after, b)]) for b in SEED_BATCHES)
    envelope = Envelope.between(b0, p0.timeline, b1, p1.timeline)
    return (envelope.at if envelope else _line(b0, p0.peak, b1, p1.peak)), len(p0.timeline) == len(p1.timeline)


def eval_curve(steps, after: tuple, shift: float = 0.0):
    """The predicted eval peak at any eval batch after a train step at `after` (batch, accumulation)."""
    at, exact = _eval(steps, after)
    return (lambda batch: at(batch) + shift), exact


def exact_frontier(live, predicted, budget: int, capacity: int, allowance: Allowance, max_batch: int) -> FrontierSearch:
    """Largest batch whose live peak `live(batch)` (a fake-tensor step per call) fits: its
    reserved bytes within the budget and the whole footprint, CUDA context included, within the
    card. `predicted(batch)` gives the search its first trial; the answer rests on trials only."""
    limit = min(budget, capacity - allowance.cuda_context)  # on reserved bytes
    hint = largest_batch(predicted, budget, allowance, capacity, max_batch)
    search = FrontierSearch(budget=int(limit), max_batch=max_batch, hint=max(hint, 1))

    def trial(batch: int):
        reserved = allowance.reserved(live(batch))
        return ("fit" if reserved <= limit else "over_budget"), round(reserved)

    return run_search(search, trial)
