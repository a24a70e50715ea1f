"""What a throughput measurement is, how measurements are ranked, which of them the runoff
times again, and (with a plan) which trials already are the timings a search needs.

A `Measured` is one configuration timed at the target global batch. `rank` orders them fastest
first, with ties (within TIE) going to a configuration without levers, then to the lower peak.
The runoff (search/space.py `SearchSpace.runoff`) re-times the configurations whose first
timings are too close to call: within RUNOFF_BAND of the fastest, or, when the search started
from a plan (issue #13), only those whose gap to the fastest is inside the two trials' own
timing noise (the spread of their timed steps), since a gap larger than both spreads is not
noise. With a plan, a frontier trial as long as a timing is the timing at its batch
(`timed_already`), and a fit at a larger batch that ran no slower ends the step-down to
smaller ones (`rises_to_above`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIE = 0.01  # throughputs within 1% are a tie; the lower peak wins
# Configurations within 20% of the fastest are timed again (2 more rounds, round-robin): one
# short timing on a busy machine is not enough to call a winner.
RUNOFF_BAND = 0.20
RUNOFF_ROUNDS = 2


@dataclass
class Measured:
    """One measured configuration at the target global batch."""

    attn_implementation: str
    gradient_checkpointing: bool
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    tokens_per_s: float
    peak_bytes: int
    exact: bool = True
    note: str | None = None
    levers: dict = field(default_factory=dict)  # levers.LEVER_KEYS set for this configuration (issue #15)
    spread: float | None = None  # the timing trial's step-time spread (TrialResult.step_time_spread); None: unknown

    @property
    def settings(self) -> dict:
        return {"attn_implementation": self.attn_implementation, "gradient_checkpointing": self.gradient_checkpointing,
                **self.levers, "per_device_train_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}


def rank(measured: list[Measured]) -> list[Measured]:
    """Fastest first; throughputs within TIE of the fastest left go to a configuration without
    levers (a lever wins only when it is faster), then to the lower peak."""
    left = sorted(measured, key=lambda m: -m.tokens_per_s)
    ordered = []
    while left:
        top = left[0].tokens_per_s
        pick = min((m for m in left if m.tokens_per_s >= top * (1 - TIE)),
                   key=lambda m: (bool(m.levers), m.peak_bytes, -m.tokens_per_s))
        ordered.append(pick)
        left.remove(pick)
    return ordered


def noise(a: float | None, b: float | None, unknown: float) -> float:
    """How far apart two timings can be by noise alone: half the sum of their step-time spreads
    (each timing's median sits inside its steps' range), at most RUNOFF_BAND; `unknown` where a
    spread is not known (a trial from a worker or a journal)."""
    return unknown if a is None or b is None else min(RUNOFF_BAND, (a + b) / 2)


def within_noise(top: Measured, other: Measured, band: float = RUNOFF_BAND) -> bool:
    """Whether `other`'s gap to `top` is inside the two timings' noise (`band` where unknown)."""
    return other.tokens_per_s >= top.tokens_per_s * (1 - min(band, noise(top.spread, other.spread, band)))


def runoff_contenders(measured: list[Measured], band: float = RUNOFF_BAND, by_noise: bool = False) -> list[Measured]:
    """The configurations the runoff times again: within `band` of the fastest, or (`by_noise`)
    within the timings' own noise of it. None when fewer than two are that close."""
    if len(measured) < 2:
        return []
    top = max(measured, key=lambda m: m.tokens_per_s)
    close = [m for m in measured if m is top or (within_noise(top, m, band) if by_noise
                                                  else m.tokens_per_s >= top.tokens_per_s * (1 - band))]
    return close if len(close) > 1 else []


def _same(trial_settings: dict, settings: dict) -> bool:
    """The trial ran with these settings (and perhaps more that every trial carries)."""
    return all(trial_settings.get(k) == v for k, v in settings.items())


def _timing(trial, steps: int) -> bool:
    """A train trial that fitted and ran as long as a timing."""
    return trial.phase == "train" and trial.fits and bool(trial.tokens_per_s) and trial.steps >= steps


def timed_already(trials: list, settings: dict, steps: int):
    """A fitting train trial already run at exactly `settings` and at least `steps` long (with a
    plan, the frontier's fit at k): its step times are the throughput sample, no second trial."""
    return next((t for t in trials if _timing(t, steps) and _same(t.settings, settings)), None)


def rises_to_above(trials: list, base: dict, entry: Measured, steps: int) -> bool:
    """Whether a fit of the configuration `base` at a larger per-device batch than `entry`'s (with
    a plan, the frontier's fit at k, as long as a timing) ran no slower, up to the two timings'
    noise (none where a spread is unknown). The throughput then does not fall past `entry`'s
    batch, so, as the step-down to smaller batches itself assumes (it stops at the first fall),
    the smaller batches are slower and are not timed; a fall inside the noise is not a fall. At
    k the accumulation keeps no more samples per optimizer step than at `entry`, so the
    optimizer step weighs at least as much there: a rise seen at k is not its amortisation."""
    key = "per_device_train_batch_size"
    return any(_timing(t, steps) and int(t.settings.get(key, 0)) > entry.per_device_train_batch_size and _same(t.settings, base)
               and t.tokens_per_s >= entry.tokens_per_s * (1 - noise(t.step_time_spread, entry.spread, 0.0)) for t in trials)
