"""The validation run: the chosen configuration as the user launches it -- the real Trainer for
--validate-steps optimizer steps at the recipe's accumulation, evaluating every
steps // VALIDATE_EVALUATIONS steps (the Trainer's eval_steps: twice at 20 steps, three times at
3; optimizer state resident) -- in the same process after a full release of
memory. It passes only if nothing OOMs and the peak stays inside the usable budget (recomputed
now, from the device's capacity now). If it fails, the next configuration in throughput order
is validated. With trials in worker processes, the same run is a train trial and an eval trial
(one optimizer step, then the evaluation) through the workers."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from ..recipe.levers import describe as describe_levers
from ..errors import DoesNotFitError
from ..recipe.schema import TrialResult, Validation
from ..sizes import format_size
from ..trials.trial import run_training


@dataclass
class Validated:
    config: object  # space.Measured
    eval_batch: int | None
    validation: Validation


def _eval_batch(space, config) -> tuple[int | None, str | None]:
    if not space.spec.eval:
        return None, None
    batch = space.eval_frontier(config)
    mine = {k: config.settings[k] for k in ("attn_implementation", "gradient_checkpointing", "per_device_train_batch_size")
            if k in config.settings}
    failed = next((t for t in reversed(space.trials) if t.phase == "eval" and t.outcome == "error"
                   and all(t.settings.get(k) == v for k, v in mine.items())), None)
    if batch == 0 and failed is not None:
        # Not memory: the Trainer's evaluation itself failed, as the user's run would (e.g. transformers 5's
        # vision-language outputs carry None fields the Trainer's padding of kept logits cannot take).
        keeps = space.spec.eval_keeps
        hint = "--eval-outputs argmax (what ms-swift's acc metric keeps) or loss" if keeps == "logits" else "--eval-outputs loss"
        return 0, f"the Trainer's evaluation failed, not for memory: {failed.message} (a run with the same eval settings fails the same way; try {hint})"
    rlhf = space.spec.rlhf
    measured = space.measured_eval_frontiers.get(space.eval_key(config))
    if batch == 0 and rlhf is not None and measured:
        return 0, (f"no eval batch up to the eval frontier ({measured}) holds whole groups of --num-generations "
                   f"{rlhf.generations} across {space.spec.world_size} rank(s)")
    if batch == 0:
        hint = "--prediction-loss-only" if not space.spec.prediction_loss_only else "a shorter --max-length"
        return 0, f"eval batch 1 does not fit with {config.attn_implementation} (try {hint}, or a smaller --eval-steps)"
    return batch, None


VALIDATE_EVALUATIONS = 2  # evaluations inside the validation run, as a user's eval_strategy="steps" makes them


def _record(space, result: TrialResult | None) -> None:
    if result is None:
        return
    result.purpose = "validate"
    space.trials.append(result)
    space.progress.trial_finished(result)


def _run_here(space, workload, settings: dict, eval_batch: int | None, budget: int):
    """One Trainer run in this process: training with the evaluations inside it, judged against
    the budget recomputed now."""
    spec = space.spec
    space.progress.trial_started("train", settings)
    train, evaluation = run_training(workload, settings, spec.validate_steps, spec.eval_steps,
                                     VALIDATE_EVALUATIONS if eval_batch else 0, budget)
    _record(space, train)
    _record(space, evaluation)
    return train, evaluation


def _run_in_workers(space, settings: dict, eval_batch: int | None):
    """In supervised workers (they judge against their own budget): a train and an eval trial."""
    spec = space.spec
    space.progress.trial_started("train", settings)
    train = space.runner.run("train", settings, spec.validate_steps)
    _record(space, train)
    evaluation = None
    if train.fits and eval_batch:
        space.progress.trial_started("eval", settings)
        evaluation = space.runner.run("eval", settings, max(spec.eval_steps, 2))
        _record(space, evaluation)
    return train, evaluation


def validate_one(space, config) -> Validated:
    spec, device = space.spec, space.device
    eval_batch, problem = _eval_batch(space, config)
    workload = getattr(space.runner, "workload", None)
    if workload is not None:
        gc.collect()
        device.release()  # a full release: the run starts from the model and nothing else
        budget = int(device.capacity * spec.usable_fraction)
    else:  # workers release between trials themselves
        budget = space.budget
    settings = {**config.settings, "gradient_accumulation_steps": config.gradient_accumulation_steps}
    if eval_batch:
        settings.update(space.eval_settings(config.attn_implementation, config.gradient_checkpointing),
                        per_device_eval_batch_size=eval_batch)
    attempt = {**config.settings, "per_device_eval_batch_size": eval_batch}
    train = evaluation = None
    with space.phase("validate"):
        if problem is None:
            if workload is not None:
                train, evaluation = _run_here(space, workload, {**getattr(space.runner, "base", {}), **settings}, eval_batch, budget)
            else:
                train, evaluation = _run_in_workers(space, settings, eval_batch)
    failed = [t for t in (train, evaluation) if t is not None and not t.fits]
    if problem is None and failed:
        t = failed[0]
        seen = f"peak {format_size(t.peak_bytes)}" if t.peak_bytes else (t.message or t.outcome)
        problem = f"{t.phase} {t.outcome}: {seen} against a usable budget of {format_size(budget)}"
    peaks = [t.peak_bytes for t in (train, evaluation) if t is not None and t.peak_bytes is not None]
    peak = max(peaks) if peaks else None
    attempt.update(passed=problem is None, peak_bytes=peak, message=problem)
    validation = Validation(
        passed=problem is None, method="validation-run", steps=train.steps if train else 0, peak_bytes=peak,
        headroom_bytes=budget - peak if peak is not None else None,
        headroom_pct=round(100.0 * (budget - peak) / budget, 2) if peak is not None else None,
        tokens_per_s=train.tokens_per_s if train else None, message=problem,
        eval_steps=evaluation.steps if evaluation else 0, eval_peak_bytes=evaluation.peak_bytes if evaluation else None,
        attempts=[attempt],
    )
    return Validated(config, eval_batch, validation)


def validate(space, ranked: list) -> Validated:
    """Validate configurations in order until one passes; DoesNotFitError when none does."""
    attempts: list[dict] = []
    for config in ranked:
        space.progress.stage(f"validating {config.attn_implementation}, checkpointing {describe_levers(config.settings)}, "
                             f"batch {config.per_device_train_batch_size}: {space.spec.validate_steps} train steps"
                             + (" and an eval phase" if space.spec.eval else ""))
        result = validate_one(space, config)
        attempts.extend(result.validation.attempts)
        if result.validation.passed:
            result.validation.attempts = attempts
            return result
        space.progress.stage(f"validation failed: {result.validation.message}")
    last = attempts[-1]["message"] if attempts else "nothing was measured"
    raise DoesNotFitError(f"no configuration passed the validation run ({len(attempts)} tried; last: {last})",
                          "try --train-type lora, a shorter --max-length, --no-eval, or a larger card")
