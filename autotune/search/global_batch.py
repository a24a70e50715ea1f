"""Keep the global batch: per-device batch x accumulation x world size = target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Split:
    per_device: int
    accumulation: int
    world_size: int
    target: int | None
    exact: bool
    note: str | None = None

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation * self.world_size


def exact_splits(target: int, frontier: int, world_size: int) -> list[int]:
    """Every per-device batch b <= frontier with b * g * world_size == target for a whole g."""
    if target % world_size:
        return []
    per_rank = target // world_size
    return [b for b in range(1, min(frontier, per_rank) + 1) if per_rank % b == 0]


def split_global_batch(target: int | None, frontier: int, world_size: int = 1) -> Split:
    """The largest per-device batch that splits `target` exactly; else the closest global batch
    reachable (ties go to the larger per-device batch), with a note saying so."""
    if frontier < 1:
        raise ValueError("frontier must be at least 1")
    if target is None:
        return Split(frontier, 1, world_size, None, True)
    exact = exact_splits(target, frontier, world_size)
    if exact:
        b = exact[-1]
        return Split(b, target // (world_size * b), world_size, target, True, split_advice(target, frontier, world_size))
    best = None
    for b in range(1, frontier + 1):
        g = max(1, round(target / (b * world_size)))
        key = (abs(b * g * world_size - target), -b)
        if best is None or key < best[0]:
            best = (key, b, g)
    _, b, g = best
    effective = b * g * world_size
    reason = (f"{target} is not a multiple of the world size {world_size}" if target % world_size
              else f"no per-device batch <= {frontier} divides {target // world_size}")
    return Split(b, g, world_size, target, False,
                 f"global batch {target} cannot be split exactly ({reason}); using {b} x {g} x {world_size} = {effective}")


def _best_exact(target: int, frontier: int, world_size: int) -> int:
    splits = exact_splits(target, frontier, world_size)
    return splits[-1] if splits else 0


def nearest_good_targets(target: int, frontier: int, world_size: int = 1) -> list[int]:
    """The nearest global batch below and above `target` whose exact split uses at least 3/4 of
    the frontier per device."""
    good = max(1, -(-3 * frontier // 4))
    below = next((g for g in range(target - 1, 0, -1) if _best_exact(g, frontier, world_size) >= good), None)
    above = next(g for g in range(target + 1, 4 * target + frontier * world_size + 1) if _best_exact(g, frontier, world_size) >= good)
    return [g for g in (below, above) if g is not None]


def split_advice(target: int | None, frontier: int, world_size: int = 1) -> str | None:
    """A note when `target` splits exactly only with a per-device batch below half the frontier
    (97 with 14 fitting: 1 x 97), naming the nearest global batches that split well. None when a
    rank's share fits whole (no accumulation: nothing a split could improve)."""
    if target is None or frontier < 2:
        return None
    best = _best_exact(target, frontier, world_size)
    if best == 0 or 2 * best >= frontier or best * world_size == target:
        return None
    options = []
    for g in nearest_good_targets(target, frontier, world_size):
        b = _best_exact(g, frontier, world_size)
        options.append(f"{g} ({b} x {g // (b * world_size)} x {world_size})")
    return (f"global batch {target} splits exactly only with per-device batch {best} or less (here {best} x "
            f"{target // (best * world_size)} x {world_size}), though {frontier} fits: no split is close; "
            f"the nearest global batches that split well are {' or '.join(options)}")
