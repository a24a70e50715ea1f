"""Run one candidate configuration for a few real optimizer steps and report what happened.

An OOM is data: it is caught, the failed step's memory is released, and a TrialResult with
outcome "oom" comes back. Cleanup happens *after* the except block: until it ends, the
exception's traceback keeps the failed frames (and their activations) alive.
"""

from __future__ import annotations

import gc
import statistics
import time

from .devices import short_message
from .recipe import TrialResult


def _train_steps(workload, batch_size: int, steps: int, timings: list[float]) -> int:
    """Real training steps; returns the peak bytes over steps 2.. (AdamW's state is lazy)."""
    device = workload.device
    model = workload.model
    optimizer = workload.make_optimizer()
    peak = 0
    with device.tracking():
        for step in range(steps):
            if step == 1:
                device.reset_peak()
            device.synchronize()
            start = time.perf_counter()
            batch = workload.make_batch(batch_size)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss, batch
            device.synchronize()
            timings.append(time.perf_counter() - start)
        peak = device.peak_bytes()
    return peak


def run_train_trial(workload, batch_size: int, steps: int, budget: int, settings: dict | None = None) -> TrialResult:
    device = workload.device
    settings = {
        "per_device_train_batch_size": batch_size,
        "gradient_checkpointing": workload.gradient_checkpointing,
        "attn_implementation": workload.attn_implementation,
        **(settings or {}),
    }
    device.release()
    baseline = device.allocated_bytes()
    timings: list[float] = []
    started = time.perf_counter()
    peak = None
    message = None
    try:
        peak = _train_steps(workload, batch_size, steps, timings)
        outcome = "fit" if peak <= budget else "over_budget"
    except Exception as exc:  # noqa: BLE001 - every failure becomes data
        outcome = "oom" if device.is_oom(exc) else "error"
        message = short_message(exc)
    # Outside the except block: the exception and its traceback are gone now.
    workload.model.zero_grad(set_to_none=True)
    stats = device.memory_stats()
    if device.allocated_bytes() > baseline:
        gc.collect()  # reference cycles still hold tensors; a full collection is slow, so only then
    device.release()
    leaked = device.allocated_bytes() - baseline
    measured = timings[1:] if len(timings) > 1 else timings
    step_time = statistics.median(measured) if outcome in ("fit", "over_budget") and measured else None
    tokens = workload.tokens_per_batch(batch_size)
    return TrialResult(
        phase="train",
        settings=settings,
        outcome=outcome,
        peak_bytes=peak,
        step_time_s=step_time,
        tokens_per_s=(tokens / step_time) if step_time else None,
        steps=len(timings),
        wall_s=time.perf_counter() - started,
        message=message,
        leaked_bytes=leaked if leaked > 0 else None,
        memory_stats=stats or None,
    )
