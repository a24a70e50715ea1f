"""The plan against the sim probe: a plan's frontier must be what the sim device's Trainer trials
measure on the same card, a fit at k and no fit at k + 1, for train and for eval (after a train
step at the planned batch, as the probe evaluates its winner); the planned peaks at the
frontiers within 2% of the trials'."""

from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.model_source import resolve
from autotune.plan import PlanOptions, make_plan
from autotune.plan_breakdown import Allowance
from autotune.plan_measure import build_plan_workload, measure_candidate, plan_source
from autotune.search import NON_FIT
from autotune.trial import run_eval_trial, run_train_trial
from autotune.workload import load_workload

MiB = 2**20


def card_near(spec, attn: str, checkpointing: bool, batch: int = 5) -> int:
    """A card (whole MiB) whose train frontier is near `batch` by the line through the fake
    peaks at batches 2 and 3 alone: the plan's search does not choose its own test card."""
    m = measure_candidate(build_plan_workload(plan_source(spec), spec, FakeDevice()), attn, checkpointing, batches=(2, 3))
    assert m.error is None, m.error
    slope = m.train_peaks[3] - m.train_peaks[2]
    return -(-(m.train_peaks[3] + slope * (batch - 3) + slope // 2) // MiB) * MiB


def check_plan_against_sim(spec, attn: str = "sdpa", checkpointing: bool = False, capacity: int | None = None):
    """Plan one candidate for one card (no allowance: the sim device has no CUDA context), then
    run the sim Trainer trials at the planned frontiers and one past them. Returns the prediction."""
    spec = spec.replace(margin=0.0, attn_implementation=attn, gradient_checkpointing=checkpointing)
    capacity = capacity or card_near(spec, attn, checkpointing)
    plan = make_plan(spec, PlanOptions([capacity], attn=[attn], checkpointing=[checkpointing], allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.candidates
    assert candidate.measure.error is None, candidate.measure.error
    p = candidate.predictions[0]
    train, evaluate = p.train_frontier, p.eval_frontier
    assert 0 < train < spec.max_batch_size and 0 < evaluate < spec.max_batch_size, (train, evaluate)
    real = load_workload(resolve(spec.model, spec.model_config), spec.replace(device="sim", gpu_memory=capacity), SimDevice(capacity))
    settings = {"attn_implementation": attn, "gradient_checkpointing": checkpointing}
    fit, over = (run_train_trial(real, b, 2, capacity, settings) for b in (train, train + 1))  # peak from step 2 on
    assert fit.outcome == "fit" and over.outcome in NON_FIT, (capacity, train, fit.outcome, over.outcome)
    assert abs(p.live_peak_bytes - fit.peak_bytes) <= 0.02 * fit.peak_bytes, (p.live_peak_bytes, fit.peak_bytes)
    after = {**settings, **spec.eval_keep_settings(), "per_device_train_batch_size": p.per_device_train_batch_size,
             "gradient_accumulation_steps": p.gradient_accumulation_steps}
    fit, over = (run_eval_trial(real, b, max(spec.eval_steps, 2), capacity, after) for b in (evaluate, evaluate + 1))
    assert fit.outcome == "fit" and over.outcome in NON_FIT, (capacity, evaluate, fit.outcome, over.outcome)
    assert abs(p.eval_peak_bytes - fit.peak_bytes) <= 0.02 * fit.peak_bytes, (p.eval_peak_bytes, fit.peak_bytes)
    return p
