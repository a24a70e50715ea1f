"""The plan against the sim probe: a plan's frontier must be what the sim device's Trainer trials
measure on the same card, a fit at k and no fit at k + 1, for train and for eval (after a train
step at the planned batch, as the probe evaluates its winner); the planned peaks at the
frontiers within 2% of the trials'."""

from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.model.source import resolve
from autotune.plan.planner import PlanOptions, make_plan
from autotune.plan.breakdown import Allowance
from autotune.plan.measure import CandidateSteps, build_plan_workload, plan_source, switch_candidate
from autotune.search.frontier import NON_FIT
from autotune.trials.trial import run_eval_trial, run_train_trial
from autotune.model.workload import load_workload

MiB = 2**20


def card_near(spec, attn: str, checkpointing: bool, batch: int = 4) -> int:
    """A card (whole MiB) whose train frontier is near `batch` by the line through the fake
    train peaks at batches 2 and 3 alone: the plan's search does not choose its own test card."""
    workload = build_plan_workload(plan_source(spec), spec, FakeDevice())
    steps = CandidateSteps(workload, switch_candidate(workload, attn, checkpointing))
    try:
        low, high = steps.train(2).peak, steps.train(3).peak
    finally:
        steps.close()
    return -(-(high + (high - low) * (batch - 3) + (high - low) // 2) // MiB) * MiB


def check_plan_against_sim(spec, attn: str = "sdpa", checkpointing: bool = False, capacity: int | None = None,
                           keep_logits: bool = True, loss_exact: bool = False):
    """Plan one candidate for one card (no allowance: the sim device has no CUDA context), then
    run the sim Trainer trials at the planned frontiers and one past them. Returns the prediction.
    Evaluation keeps the logits (the probe's default), where the planned eval step is exact.
    `keep_logits=False` (LLaVA: the Trainer's logits path fails on a None among its outputs in
    accelerate's padding) keeps the loss only, where the planned eval step holds about one
    half-precision logits copy per sample more than the Trainer's (not found yet): the planned
    eval frontier must fit and be at most one batch short, its peak within 5%. `loss_exact`: a model
    whose loss-only eval step the plan has exactly (Qwen2-VL): held to keeping logits' bounds."""
    spec = spec.replace(margin=0.0, attn_implementation=attn, gradient_checkpointing=checkpointing,
                        prediction_loss_only=not keep_logits, eval_outputs=None)
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
    past = 1 if keep_logits or loss_exact else 2
    fit, over = (run_eval_trial(real, b, max(spec.eval_steps, 2), capacity, after) for b in (evaluate, evaluate + past))
    assert fit.outcome == "fit" and over.outcome in NON_FIT, (capacity, evaluate, fit.outcome, over.outcome)
    tolerance = 0.02 if keep_logits or loss_exact else 0.05
    assert abs(p.eval_peak_bytes - fit.peak_bytes) <= tolerance * fit.peak_bytes, (p.eval_peak_bytes, fit.peak_bytes)
    return p
