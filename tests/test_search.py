"""The search against brute force on synthetic peak functions: no torch needed."""

import math
import random

import pytest

from autotune.search.frontier import FrontierSearch, run_search


def affine(a, b, capacity):
    def measure(batch):
        peak = a + b * batch
        return ("fit", peak) if peak <= budget(capacity) else (("oom", None) if peak > capacity else ("over_budget", peak))
    return measure


def budget(capacity):
    return int(capacity * 0.9)


def brute_force(measure, max_batch):
    best = 0
    for batch in range(1, max_batch + 1):
        if measure(batch)[0] == "fit":
            best = batch
        else:
            break
    return best


@pytest.mark.parametrize("a,b,capacity,max_batch", [
    (100, 10, 1000, 256), (5_000, 1, 10_000, 256), (100, 1000, 1000, 256), (100, 10, 10**9, 64),
    (900, 1, 1000, 256), (1, 3, 1000, 1), (14_000_000_000, 1_900_000_000, 80 * 2**30, 256),
])
def test_affine_frontier_is_exact_and_cheap(a, b, capacity, max_batch):
    measure = affine(a, b, capacity)
    search = run_search(FrontierSearch(budget(capacity), max_batch), measure)
    assert search.frontier == brute_force(measure, max_batch)
    assert len(search.points) <= 5
    _assert_adjacent(search, max_batch)


def _assert_adjacent(search, max_batch):
    fits = {p.batch for p in search.points if p.outcome == "fit"}
    misses = {p.batch for p in search.points if p.outcome != "fit"}
    k = search.frontier
    if k == 0:
        assert 1 in misses
    else:
        assert k in fits
        assert k == max_batch or (k + 1) in misses


def test_random_monotone_functions_match_brute_force():
    """Peaks that are not affine (convex, concave, steps, noise) still give the exact frontier."""
    rng = random.Random(7)
    worst = 0
    for _ in range(400):
        a = rng.randint(0, 5000)
        b = rng.randint(1, 500)
        curve = rng.choice([lambda x: x, lambda x: x**1.3, lambda x: math.sqrt(x) * 10, lambda x: x + (x // 8) * 20])
        capacity = rng.randint(1000, 100_000)
        jitter = {x: rng.randint(0, b // 4 + 1) for x in range(1, 300)}

        def measure(batch, a=a, b=b, curve=curve, capacity=capacity, jitter=jitter):
            # monotone in batch: jitter is bounded below one slope step
            peak = int(a + b * curve(batch)) + jitter[batch]
            if peak > capacity:
                return "oom", None
            return ("fit", peak) if peak <= budget(capacity) else ("over_budget", peak)

        max_batch = rng.choice([1, 7, 64, 256])
        search = run_search(FrontierSearch(budget(capacity), max_batch), measure)
        assert search.frontier == brute_force(measure, max_batch)
        _assert_adjacent(search, max_batch)
        assert len({p.batch for p in search.points}) == len(search.points), "a batch was measured twice"
        worst = max(worst, len(search.points))
    assert worst <= 12  # bisection bounds the bad cases: log2(256) + a few


def test_nothing_fits():
    search = run_search(FrontierSearch(100, 256), lambda b: ("oom", None))
    assert search.frontier == 0 and len(search.points) == 1


def test_error_stops_the_search():
    search = run_search(FrontierSearch(100, 256), lambda b: ("error", None))
    assert search.error and search.done


def test_hint_starts_near_the_frontier():
    measure = affine(100, 10, 1000)
    truth = brute_force(measure, 256)
    search = run_search(FrontierSearch(budget(1000), 256, hint=truth), measure)
    assert search.frontier == truth and len(search.points) <= 3
