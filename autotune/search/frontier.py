"""Find the exact largest batch size that fits: pure logic, no torch.

Peak memory is affine in batch size for a fixed configuration (peak = a + b*batch). Two small
probes give the line (a secant through the two measured peaks nearest the frontier); the next probe is the largest batch the line puts under the budget; then
the interval between the largest fit and the smallest non-fit closes, by the line while it keeps
halving the interval, by bisection when it does not. The answer is exact: a fit at k and a
non-fit at k+1 (or k equal to the bound) are both measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A trial that hung or killed its worker (an OOM mid-collective, a sticky CUDA error) does not fit.
NON_FIT = ("oom", "over_budget", "timeout", "crashed")


@dataclass
class Point:
    batch: int
    outcome: str
    peak: int | None


@dataclass
class FrontierSearch:
    budget: int
    max_batch: int
    hint: int | None = None  # a predicted frontier (from a plan, or an earlier candidate)
    points: list[Point] = field(default_factory=list)
    error: str | None = None
    _stalls: int = 0
    _step: str = ""
    _undershot: bool = False

    # -------------------------------------------------------------- state
    @property
    def lo(self) -> int:
        """Largest batch measured to fit (0: none yet)."""
        return max((p.batch for p in self.points if p.outcome == "fit"), default=0)

    @property
    def hi(self) -> int:
        """Smallest batch measured not to fit (max_batch + 1: none yet)."""
        return min((p.batch for p in self.points if p.outcome in NON_FIT), default=self.max_batch + 1)

    @property
    def frontier(self) -> int:
        return self.lo

    @property
    def done(self) -> bool:
        return self.error is not None or self.hi - self.lo <= 1

    def line(self) -> tuple[float, float] | None:
        """(intercept, slope) of the secant through the two measured peaks nearest the frontier:
        exact for an affine peak, and it adapts where the peak curves."""
        measured = {p.batch: p.peak for p in self.points if p.peak is not None and p.outcome in ("fit", "over_budget")}
        if len(measured) < 2:
            return None
        lo, hi = self.lo, self.hi
        below = sorted(b for b in measured if b <= lo)
        above = sorted(b for b in measured if b >= hi)
        if below and above:
            x0, x1 = below[-1], above[0]
        elif len(below) >= 2:
            x0, x1 = below[-2], below[-1]
        else:
            x0, x1 = sorted(measured)[:2]
        slope = (measured[x1] - measured[x0]) / (x1 - x0)
        return measured[x0] - slope * x0, slope

    def predict(self) -> int | None:
        """Largest batch the line puts under the budget."""
        fit = self.line()
        if fit is None:
            return None
        intercept, slope = fit
        if slope <= 0:
            return self.max_batch
        return int((self.budget - intercept) // slope)

    # -------------------------------------------------------------- steps
    def next_batch(self) -> int | None:
        if self.done:
            return None
        lo, hi = self.lo, self.hi
        tried = {p.batch for p in self.points}
        if not self.points:
            first = self.hint if self.hint else 1
            return min(max(first, 1), self.max_batch)
        predicted = self.predict()
        self._step = "line"
        if predicted is None:
            # One measured point: take a neighbour to get a line (1 then 2, typically).
            candidate, self._step = (lo + 1 if lo else (hi + lo) // 2), "seed"
        elif self._stalls >= 2 or (predicted >= hi and hi <= self.max_batch):
            # The line keeps missing, or points past a measured non-fit: it is wrong here.
            candidate, self._step = (lo + hi) // 2, "bisect"
        elif predicted <= lo:
            # The line says lo is the frontier: confirm with lo + 1, once; then stop trusting it.
            if self._undershot:
                candidate, self._step = (lo + hi) // 2, "bisect"
            else:
                candidate, self._step = lo + 1, "confirm"
        else:
            candidate = predicted
        candidate = min(max(candidate, lo + 1), hi - 1)
        while candidate in tried and candidate < hi - 1:  # never measure the same batch twice
            candidate += 1
        return candidate

    def record(self, batch: int, outcome: str, peak: int | None) -> None:
        width_before = self.hi - self.lo
        self.points.append(Point(batch, outcome, peak))
        if outcome not in ("fit",) + NON_FIT:
            self.error = f"batch {batch}: {outcome}"
            return
        if self._step == "bisect":
            self._stalls, self._undershot = 0, False
        elif self._step in ("line", "confirm"):
            self._stalls = self._stalls + 1 if (self.hi - self.lo) * 2 > width_before else 0
            self._undershot = self._step == "confirm" and outcome == "fit"


def run_search(search: FrontierSearch, measure) -> FrontierSearch:
    """Drive a search with `measure(batch) -> (outcome, peak)`; used by benchmarks and tests."""
    while (batch := search.next_batch()) is not None:
        outcome, peak = measure(batch)
        search.record(batch, outcome, peak)
    return search
