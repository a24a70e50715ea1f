"""The cluster's search dimensions around the batch-size frontier: the sharding strategy (when
the user gives several) and, on CUDA, the allocator's expandable segments.

Each candidate gets its own exact frontier (`probe.find_frontier`). Among strategies the
winner is the fastest at its frontier (tokens/s per rank; ties go to the larger frontier): the
objective is training throughput, and a bigger batch under ZeRO-3 can still be slower than a
smaller one under DDP. Expandable segments are probed last, in a fresh worker (the variable must
precede CUDA initialisation), starting at the frontier they must beat; they go into the recipe
only when they raise it.
"""

from __future__ import annotations

from ..cluster.fragmentation import EXPANDABLE, wants_expandable


def _score(search, trials, start: int):
    best = next((t for t in trials[start:] if t.fits and t.phase == "train" and t.batch_size == search.frontier), None)
    return ((best.tokens_per_s or 0.0) if best else 0.0, search.frontier)


def search_train(runner, base: dict, budget: int, max_batch: int, progress, trials: list, strategies=(),
                 expandable: str = "off", device_kind: str = "sim", hint: int | None = None):
    """Returns (chosen base settings, its FrontierSearch). `hint`: a predicted frontier (a plan)."""
    from ..probe import find_frontier

    env = dict(base.get("env") or {})
    if expandable == "on":
        env.update(EXPANDABLE)
    first = {**base, "env": env} if env else dict(base)
    candidates = [{**first, "strategy": s} for s in strategies] or [first]
    chosen = None
    for candidate in candidates:
        if len(candidates) > 1:
            progress.stage(f"strategy {candidate['strategy']}")
        start = len(trials)
        search = find_frontier(runner, "train", candidate, budget, max_batch, progress, trials, hint=hint)
        if search.error and len(candidates) > 1:
            progress.stage(f"strategy {candidate['strategy']} failed: {trials[-1].message}")
            continue
        score = _score(search, trials, start)
        if chosen is None or score > chosen[2]:
            chosen = (candidate, search, score)
    if chosen is None:  # every strategy failed: report the last failure
        return candidates[-1], search
    base, search, _ = chosen
    if expandable == "auto" and device_kind == "cuda" and not search.error and search.frontier > 0:
        trial = {**base, "env": {**(base.get("env") or {}), **EXPANDABLE}}
        progress.stage("probing PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in a fresh worker")
        other = find_frontier(runner, "train", trial, budget, max_batch, progress, trials, hint=search.frontier + 1)
        if not other.error and wants_expandable(search.frontier, other.frontier):
            return trial, other
    return base, search
