"""Run one candidate configuration for a few real steps and report what happened.

A trial is fully described by `(phase, settings)`: settings use Hugging Face names
(`per_device_train_batch_size`, `gradient_checkpointing`, `attn_implementation`, ...), so any
trial can be re-run from the recipe alone, journaled, or sent to a worker process.

An OOM is data: it is caught, the failed step's memory is released, and a TrialResult with
outcome "oom" comes back. Cleanup happens *after* the except block: until it ends, the
exception's traceback keeps the failed frames (and their activations) alive.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

from .devices import short_message
from .recipe import TrialResult


def _train_steps(workload, batch_size: int, steps: int, timings: list[float]) -> int:
    """Real training steps; returns the peak bytes over steps 2.. (AdamW's state is lazy)."""
    device = workload.device
    model = workload.model
    optimizer = workload.make_optimizer()
    with device.tracking():
        for step in range(steps):
            if step == 1:
                device.reset_peak()
            device.synchronize()
            start = time.perf_counter()
            batch = workload.make_batch(batch_size)
            loss = model(**batch).loss
            workload.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss, batch
            device.synchronize()
            timings.append(time.perf_counter() - start)
        return device.peak_bytes()


def _eval_outputs(model, batch: dict, max_new_tokens: int | None):
    """What one eval step predicts. Plain: the forward's logits. With generation (Seq2SeqTrainer's
    predict_with_generate): generate() grows the KV cache for max_new_tokens, then a forward with
    labels computes the loss; the prediction kept is the generated ids."""
    if not max_new_tokens:
        return model(**batch).logits
    ids = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=0)
    model(**batch)  # the loss forward: its logits are dropped at once
    return ids


def _eval_steps(workload, batch_size: int, steps: int, timings: list[float], keep_logits: bool,
                eval_accumulation_steps: int | None, max_new_tokens: int | None = None) -> int:
    """Evaluation the way the Hugging Face Trainer runs it: eval mode, no grad, forward with
    labels. With `keep_logits` (the Trainer with compute_metrics and no
    preprocess_logits_for_metrics), each step's logits (generated ids with `max_new_tokens`) and
    labels stay on the device, concatenated, until `eval_accumulation_steps` moves them to the host."""
    device = workload.device
    model = workload.model
    model.eval()
    held_logits = held_labels = None
    try:
        with device.tracking(), torch.no_grad():
            for step in range(steps):
                device.synchronize()
                start = time.perf_counter()
                batch = workload.make_batch(batch_size)
                out = _eval_outputs(model, batch, max_new_tokens)
                if keep_logits:
                    logits, labels = out.detach(), batch["labels"]
                    held_logits = logits if held_logits is None else torch.cat([held_logits, logits])
                    held_labels = labels if held_labels is None else torch.cat([held_labels, labels])
                    del logits, labels
                    if eval_accumulation_steps and (step + 1) % eval_accumulation_steps == 0:
                        held_logits = held_labels = None  # moved to the host: off the device
                del out, batch
                device.synchronize()
                timings.append(time.perf_counter() - start)
            return device.peak_bytes()
    finally:
        held_logits = held_labels = None
        model.train()


def run_trial(workload, phase: str, settings: dict, steps: int, budget: int) -> TrialResult:
    """Configure the workload for `settings` and run `steps` real steps of `phase`."""
    device = workload.device
    workload.configure(attn_implementation=settings.get("attn_implementation"),
                       gradient_checkpointing=settings.get("gradient_checkpointing"))
    settings = {"gradient_checkpointing": workload.gradient_checkpointing,
                "attn_implementation": workload.attn_implementation, **settings}
    if phase == "train":
        batch_size = int(settings["per_device_train_batch_size"])
    elif phase == "eval":
        batch_size = int(settings["per_device_eval_batch_size"])
    else:
        raise ValueError(f"unknown trial phase {phase!r}")
    device.release()
    baseline = device.allocated_bytes()
    timings: list[float] = []
    started = time.perf_counter()
    peak = None
    message = None
    try:
        if phase == "train":
            peak = _train_steps(workload, batch_size, steps, timings)
        else:
            keep = not settings.get("prediction_loss_only", True)
            generate = settings.get("max_new_tokens") if settings.get("predict_with_generate") else None
            peak = _eval_steps(workload, batch_size, steps, timings, keep, settings.get("eval_accumulation_steps"), generate)
        outcome = "fit" if peak <= budget else "over_budget"
    except Exception as exc:  # noqa: BLE001 - every failure becomes data
        outcome = "oom" if device.is_oom(exc) else "error"
        message = short_message(exc)
    # Outside the except block: the exception and its traceback are gone now.
    workload.release_grads()
    stats = device.memory_stats()
    if device.allocated_bytes() > baseline:
        gc.collect()  # reference cycles still hold tensors; a full collection is slow, so only then
    device.release()
    leaked = device.allocated_bytes() - baseline
    measured = timings[1:] if len(timings) > 1 else timings
    step_time = statistics.median(measured) if outcome in ("fit", "over_budget") and measured else None
    tokens = workload.tokens_per_batch(batch_size)
    return TrialResult(
        phase=phase, settings=settings, outcome=outcome, peak_bytes=peak, step_time_s=step_time,
        tokens_per_s=(tokens / step_time) if step_time else None, steps=len(timings),
        wall_s=round(time.perf_counter() - started, 4), message=message,
        leaked_bytes=leaked if leaked > 0 else None, memory_stats=stats or None,
    )


def run_train_trial(workload, batch_size: int, steps: int, budget: int, settings: dict | None = None) -> TrialResult:
    return run_trial(workload, "train", {"per_device_train_batch_size": batch_size, **(settings or {})}, steps, budget)


def run_eval_trial(workload, batch_size: int, steps: int, budget: int, settings: dict | None = None) -> TrialResult:
    return run_trial(workload, "eval", {"per_device_eval_batch_size": batch_size, **(settings or {})}, steps, budget)


class InProcessRunner:
    """Runs trials in this process on a loaded workload. Other runners (a supervisor with worker
    processes, a journal that skips finished trials) offer the same `run(phase, settings)`."""

    def __init__(self, workload, steps: int, budget: int):
        self.workload = workload
        self.steps = steps
        self.budget = budget

    def run(self, phase: str, settings: dict, steps: int | None = None) -> TrialResult:
        """`steps` overrides the default (longer throughput measurements, eval accumulation)."""
        return run_trial(self.workload, phase, settings, steps or self.steps, self.budget)
