"""The search space started from a plan (issue #13 item 6): the default space (2 attentions x
checkpointing, eval, validation) in at most 12 trials, with every frontier proven and the
choice brute force's over the grid."""

import random
import types

import pytest

from autotune.devices import SimDevice
from autotune.model.source import resolve
from autotune.model.workload import load_workload
from autotune.plan.hints import planned_hints
from autotune.progress import ProgressSink
from autotune.recipe.schema import TrialResult
from autotune.search.batches import search_bound
from autotune.search.frontier import find_frontier
from autotune.search.global_batch import exact_splits
from autotune.search.space import SearchSpace
from autotune.search.throughput import TIE, Measured, rises_to_above, runoff_contenders
from autotune.search.validate import validate
from autotune.spec import ProbeSpec
from autotune.trials.trial import InProcessRunner, run_trial

MiB = 2**20
# 32 tokens, global batch 4 (per-device 1, 2 or 4): train frontiers 3 without checkpointing (a fit at 3,
# over budget at 4) and at least 4 with it (the largest batch the global batch admits)
CAPACITY = 6 * MiB
GLOBAL = 4
SPREAD = 0.02


class _Timed:
    """The real Trainer's trials with the timing replaced by a fixed speed model: fits, peaks and
    step counts are the Trainer's; tokens/s on two shared CPU cores are noise (docs/benchmarks.md,
    issue #3), and the count and the choice under test must not depend on the load."""

    def __init__(self, inner, speed):
        self.inner, self.speed = inner, speed

    @property
    def workload(self):
        return self.inner.workload

    def run(self, phase, settings, steps=None):
        result = self.inner.run(phase, settings, steps)
        if phase == "train" and result.tokens_per_s:
            result.tokens_per_s, result.step_time_spread = self.speed(result.settings), SPREAD
        return result


def _speed(checkpointing_cost):
    def speed(s):
        b = s["per_device_train_batch_size"]
        slower = (checkpointing_cost if s["gradient_checkpointing"] else 0) + (0.04 if s["attn_implementation"] == "eager" else 0)
        return 1000 * b / (b + 2) * (1 - slower)
    return speed


@pytest.fixture
def default_space():
    spec = ProbeSpec(max_length=32, model_config="tiny-llama", device="sim", gpu_memory=CAPACITY, global_batch_size=GLOBAL,
                     max_batch_size=16, attn_candidates=("sdpa", "eager"), validate_steps=3)
    workload = load_workload(resolve(None, "tiny-llama"), spec, SimDevice(CAPACITY))
    budget = int(CAPACITY * spec.usable_fraction)
    hints = planned_hints(spec, CAPACITY, budget)
    grid = {(a, g, b): run_trial(workload, "train", {"attn_implementation": a, "gradient_checkpointing": g,
                                                    "per_device_train_batch_size": b, "gradient_accumulation_steps": GLOBAL // b},
                                 spec.steps, budget)
            for a in ("sdpa", "eager") for g in (False, True) for b in exact_splits(GLOBAL, 16, 1)}
    return types.SimpleNamespace(spec=spec, workload=workload, budget=budget, hints=hints, grid=grid)


@pytest.mark.slow
def test_default_space_from_the_plan_takes_12_trials_and_chooses_the_grid_best(default_space):
    """Checkpointing costs 5% here, so sdpa with it at batch 4 wins over sdpa without it at 2 x 2
    (the table test below covers the other orders)."""
    d = default_space
    speed = _speed(0.05)
    space = SearchSpace(d.spec, _Timed(InProcessRunner(d.workload, d.spec.steps, d.budget), speed), d.workload.device,
                        d.budget, ProgressSink(), find_frontier)
    space.plan_hints = d.hints
    assert {k: v["train"] for k, v in d.hints.items()} == {("sdpa", False): 3, ("sdpa", True): 4, ("eager", False): 3,
                                                          ("eager", True): 4}
    space.search_train()
    space.runoff()
    ranked = space.ranked()
    space.eval_frontier(ranked[0])
    done = validate(space, ranked)

    phases = {name: p["trials"] for name, p in space.phases.items()}
    assert sum(phases.values()) == len(space.trials) <= 12, phases
    assert phases["eval"] <= 2 and phases["validate"] == 2  # the eval frontier from the plan: a fit at k, a non-fit at k + 1
    bound = search_bound(d.spec)
    assert bound == GLOBAL
    for cand in space.candidates:  # each frontier proven: a fit at k, and a non-fit at k + 1 or k the bound
        tried = {t.batch_size: t.outcome for t in space.trials if t.phase == "train" and t.purpose == "frontier"
                 and (t.settings["attn_implementation"], t.settings["gradient_checkpointing"])
                 == (cand.attn_implementation, cand.gradient_checkpointing)}
        k = cand.frontier
        assert tried[k] == "fit" and (k == bound or tried[k + 1] != "fit")
        assert len(tried) == (1 if k == bound else 2)
        for (a, g, b), trial in d.grid.items():  # the grid's fits are the frontier's
            if (a, g) == (cand.attn_implementation, cand.gradient_checkpointing):
                assert trial.fits == (b <= k)
    fitting = [(speed(t.settings), -t.peak_bytes, key) for key, t in d.grid.items() if t.fits]
    best_speed, _, best = max(fitting)
    chosen = done.config
    assert done.validation.passed
    assert chosen.tokens_per_s >= best_speed * (1 - TIE)
    assert (chosen.attn_implementation, chosen.gradient_checkpointing, chosen.per_device_train_batch_size) == best


# ---------------------------------------------------------------- the space's logic on a table


class _Table:
    """A runner answering from a synthetic step (the space's logic, not the Trainer):
    peak = weights + batch x activations (attention, checkpointing); speed rises with the batch,
    checkpointing and eager cost their share."""

    def __init__(self, rng):
        self.act = {("sdpa", False): rng.randint(20, 40), ("eager", False): rng.randint(40, 60)}
        self.act.update({(a, True): self.act[(a, False)] // rng.choice([2, 3, 4]) for a in ("sdpa", "eager")})
        self.cost = {False: 0.0, True: rng.choice([0.02, 0.1, 0.3])}
        self.eager = rng.choice([0.0, 0.05, 0.2])
        self.knee = rng.choice([1, 2, 8])
        self.budget = rng.randint(150, 1500)
        self.calls = 0
        self.workload = types.SimpleNamespace(setup=None, configure=lambda **kwargs: None)

    def peak(self, s):
        return 100 + s["per_device_train_batch_size"] * self.act[(s["attn_implementation"], s["gradient_checkpointing"])]

    def speed(self, s):
        b = s["per_device_train_batch_size"]
        return 1000 * b / (b + self.knee) * (1 - self.cost[s["gradient_checkpointing"]]) * (
            1 - (self.eager if s["attn_implementation"] == "eager" else 0))

    def frontier(self, attn, gc, max_batch):
        return max((b for b in range(1, max_batch + 1) if self.peak({"attn_implementation": attn, "gradient_checkpointing": gc,
                                                                      "per_device_train_batch_size": b}) <= self.budget), default=0)

    def run(self, phase, settings, steps=None):
        self.calls += 1
        peak = self.peak(settings)
        fits = peak <= self.budget
        return TrialResult(phase, dict(settings), "fit" if fits else "over_budget", peak_bytes=peak, steps=steps or 3,
                           tokens_per_s=self.speed(settings) if fits else None, step_time_spread=0.0 if fits else None)


def _table_space(table, global_batch, hints=None):
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", device="sim", gpu_memory=10**6, attn_candidates=("sdpa", "eager"),
                     global_batch_size=global_batch, max_batch_size=32)
    space = SearchSpace(spec, table, SimDevice(10**6), table.budget, ProgressSink(), find_frontier)
    space.plan_hints = hints or {}
    space.search_train()
    space.runoff()
    return space


@pytest.mark.parametrize("seed", range(40))
def test_the_planned_space_chooses_what_brute_force_chooses_in_no_more_trials(seed):
    rng = random.Random(seed)
    table, global_batch = _Table(rng), rng.choice([6, 8, 12, 16, 24, 64])
    keys = [(a, g) for a in ("sdpa", "eager") for g in (False, True)]
    exact = {k: {"train": table.frontier(*k, 32)} for k in keys if table.frontier(*k, 32)}
    off = rng.choice([-3, -1, 1, 4])  # a plan that is wrong: the search still proves every frontier
    wrong = {k: {"train": max(1, v["train"] + off)} for k, v in exact.items()}
    cold = _table_space(_Table(random.Random(seed)), global_batch)
    for hints in (exact, wrong):
        table = _Table(random.Random(seed))
        space = _table_space(table, global_batch, hints)
        bound = search_bound(space.spec)
        points = [(table.speed(s), -table.peak(s), s) for a, g in keys for b in space.reachable()
                  for s in [{"attn_implementation": a, "gradient_checkpointing": g, "per_device_train_batch_size": b}]
                  if table.peak(s) <= table.budget]
        ranked = space.ranked()
        if not points:
            assert not ranked
            continue
        best = max(points, key=lambda p: p[:2])
        assert ranked[0].tokens_per_s >= best[0] * (1 - TIE) - 1e-9
        for cand in space.candidates:
            if cand.frontier:  # what was searched is proven, up to the bound
                assert cand.frontier == min(table.frontier(cand.attn_implementation, cand.gradient_checkpointing, 32), bound)
        if hints is exact:
            assert table.calls <= len([t for t in cold.trials])


def test_the_runoff_from_a_plan_times_again_only_what_is_inside_the_noise():
    top = Measured("sdpa", False, 4, 2, 1000.0, 10, spread=0.04)
    close = Measured("eager", False, 4, 2, 970.0, 10, spread=0.04)  # 3% behind, inside 4% of noise
    apart = Measured("sdpa", True, 8, 1, 900.0, 10, spread=0.04)  # 10% behind: outside the noise, inside the 20% band
    unknown = Measured("eager", True, 8, 1, 850.0, 10)  # no spread recorded (a worker's trial): the band decides
    assert runoff_contenders([top, close, apart], by_noise=True) == [top, close]
    assert runoff_contenders([top, apart], by_noise=True) == []
    assert runoff_contenders([top, close, apart]) == [top, close, apart]  # without a plan: the 20% band, as before
    assert runoff_contenders([top, unknown], by_noise=True) == [top, unknown]


def test_a_fall_inside_the_noise_does_not_reopen_the_step_down():
    base = {"attn_implementation": "sdpa", "gradient_checkpointing": False}
    at_4 = Measured("sdpa", False, 4, 2, 1000.0, 10, spread=0.10)

    def fit_at_7(tokens_per_s, spread=0.10, steps=5):
        return TrialResult("train", {**base, "per_device_train_batch_size": 7, "gradient_accumulation_steps": 1}, "fit",
                           peak_bytes=20, tokens_per_s=tokens_per_s, steps=steps, step_time_spread=spread)

    assert rises_to_above([fit_at_7(1100.0)], base, at_4, 5)
    assert rises_to_above([fit_at_7(950.0)], base, at_4, 5)  # 5% slower, inside 10% of noise: no fall
    assert not rises_to_above([fit_at_7(850.0)], base, at_4, 5)  # 15% slower: a fall, batch 2 is timed
    assert not rises_to_above([fit_at_7(990.0, spread=None)], base, at_4, 5)  # noise unknown: only a rise counts
    assert not rises_to_above([fit_at_7(1100.0, steps=3)], base, at_4, 5)  # shorter than a timing
    assert not rises_to_above([fit_at_7(1100.0)], {**base, "gradient_checkpointing": True}, at_4, 5)  # another configuration
