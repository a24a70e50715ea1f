"""Run one configuration through the real Hugging Face Trainer and report what happened.

A trial is fully described by `(phase, settings)`: settings use Hugging Face names
(`per_device_train_batch_size`, `gradient_checkpointing`, `attn_implementation`, ...), so any
trial can be re-run from the recipe alone, journaled, or sent to a worker process.

What runs is what the user launches: `Trainer.train()` with the `TrainingArguments` the launch
files carry (training_args.arguments: batch sizes, accumulation, checkpointing and its kwargs,
mixed precision, optimizer, eval keeping), on a synthetic worst-case dataset (every sample at
the worst case the spec names). The eval phase is the Trainer's own evaluation, triggered by
`eval_strategy="steps"` inside training after an optimizer step, so the optimizer state is
resident and outputs are kept as the Trainer keeps them. Peaks and step times come from a
`TrainerCallback`; autotune runs no step loop of its own.

- a "train" trial trains `steps` optimizer steps; its peak is read from step 2 on (AdamW
  creates its state in step 1);
- an "eval" trial trains one optimizer step (the state exists from then on) and evaluates
  `steps` eval steps; its peak is the evaluation's;
- `run_training` is the validation run: many steps with evaluations in the middle.

An OOM is data: it is caught, the trainer and everything it held are released, and a
TrialResult with outcome "oom" comes back. Cleanup happens *after* the except block: until it
ends, the exception's traceback keeps the failed frames (and their activations) alive.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass, field


from ..devices import short_message
from ..recipe.schema import TrialResult
from .trainer_run import build_trainer, restore_model


@dataclass
class _Window:
    """What one phase of a Trainer run measured."""

    peak: int | None = None
    times: list = field(default_factory=list)

    def add_peak(self, value: int) -> None:
        self.peak = value if self.peak is None else max(self.peak, value)

    def _timed(self) -> list:
        return self.times[1:] if len(self.times) > 1 else self.times  # the first step warms up

    def step_time(self) -> float | None:
        timed = self._timed()
        return statistics.median(timed) if timed else None

    def spread(self) -> float | None:
        """(slowest - fastest) / median of the timed steps; None below two of them."""
        timed = self._timed()
        return round((max(timed) - min(timed)) / statistics.median(timed), 4) if len(timed) > 1 and min(timed) > 0 else None


def _meter_class():
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        """Peaks and step times per phase, read at the Trainer's own step and eval boundaries."""

        def __init__(self, device, stop_over: int | None = None):
            self.device = device
            self.stop_over = stop_over
            self.phase = "train"
            self.train, self.eval = _Window(), _Window()
            self.evaluations = 0
            self._t = 0.0

        def _now(self) -> float:
            self.device.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.device.reset_peak()  # from step 2 on: AdamW's state is lazy
            self.phase = "train"
            self._t = self._now()

        def on_step_end(self, args, state, control, **kwargs):
            self.train.times.append(self._now() - self._t)
            if state.global_step >= 2:
                self.train.add_peak(self.device.peak_bytes())
                if self.stop_over is not None and self.train.peak > self.stop_over:
                    # Over the budget with the optimizer state resident: the outcome cannot change
                    # (the peak only grows), so the steps left would be spent on a known non-fit.
                    control.should_training_stop = True
            if control.should_evaluate:  # the Trainer evaluates next, after zero_grad, optimizer state resident
                self.phase = "eval"
                self.device.reset_peak()
                self._t = self._now()

        def start_evaluation(self):
            """Evaluation alone (Trainer.evaluate): the window opens now, on the model alone."""
            self.phase = "eval"
            self.device.reset_peak()
            self._t = self._now()

        def on_prediction_step(self, args, state, control, **kwargs):
            now = self._now()
            self.eval.times.append(now - self._t)
            self._t = now

        def on_evaluate(self, args, state, control, **kwargs):
            self.eval.add_peak(self.device.peak_bytes())
            self.evaluations += 1
            self.phase = "train"
            self.device.reset_peak()

    return Meter


@dataclass
class TrainerRun:
    """One `Trainer.train()`: each phase's peak and step times, and how it ended."""

    train: _Window
    eval: _Window
    outcome: str = "ran"  # "ran" | "oom" | "error"
    failed_phase: str | None = None
    message: str | None = None
    wall_s: float = 0.0
    leaked: int = 0
    stats: dict | None = None
    train_steps: int = 0
    eval_steps: int = 0


def train_with_trainer(workload, settings: dict, train_steps: int, eval_every: int | None = None,
                       eval_steps: int = 0, stop_over: int | None = None) -> TrainerRun:
    """Train `train_steps` optimizer steps with the real Trainer at `settings`; with `eval_every`,
    the Trainer evaluates `eval_steps` eval batches every `eval_every` steps, inside training.
    `stop_over`: end training after the first step (from step 2, the first with the optimizer
    state resident) whose train peak passes these bytes."""
    return _with_trainer(workload, settings, train_steps, eval_every, eval_steps, evaluate_only=False, stop_over=stop_over)


def evaluate_with_trainer(workload, settings: dict, eval_steps: int) -> TrainerRun:
    """Evaluation alone (`--task eval`, the benchmark case): the Trainer's `evaluate()` for
    `eval_steps` batches, no training before it, so no optimizer state and no gradients; with
    `predict_with_generate` every sample generates `max_new_tokens`."""
    return _with_trainer(workload, {**settings, "gradient_checkpointing": False}, 1, 1, eval_steps, evaluate_only=True)


def _with_trainer(workload, settings: dict, train_steps: int, eval_every: int | None, eval_steps: int,
                  evaluate_only: bool, stop_over: int | None = None) -> TrainerRun:
    device = workload.device
    prior = workload.gradient_checkpointing
    # The Trainer enables checkpointing itself, from the arguments, as in the user's run.
    workload.configure(attn_implementation=settings.get("attn_implementation"), gradient_checkpointing=False)
    if workload.spec.rlhf is not None:
        from . import rlhf_run

        rlhf_run.prepare(workload)  # the reference model, resident from the first trial on
    device.release()
    baseline = device.allocated_bytes()
    meter = _meter_class()(device, stop_over)
    started = time.perf_counter()
    outcome, failed, message = "ran", None, None
    saved = None
    try:
        trainer, saved = build_trainer(workload, settings, train_steps, eval_every, eval_steps, meter)
        with device.tracking(), device.transfers(), saved.get("during") or contextlib.nullcontext():
            if evaluate_only:
                meter.start_evaluation()
                trainer.evaluate()
            else:
                trainer.train()
    except Exception as exc:  # noqa: BLE001 - every failure becomes data
        outcome = "oom" if device.is_oom(exc) else "error"
        failed, message = meter.phase, short_message(exc)
    # Outside the except block: the exception and its traceback are gone now.
    trainer = None
    restore_model(workload, saved)
    workload.configure(gradient_checkpointing=prior)
    stats = device.memory_stats()
    if device.allocated_bytes() > baseline:
        gc.collect()  # the trainer's reference cycles still hold tensors; a full collection only then
    device.release()
    _freeze_once()
    return TrainerRun(meter.train, meter.eval, outcome, failed, message, round(time.perf_counter() - started, 4),
                      device.allocated_bytes() - baseline, stats or None, len(meter.train.times), len(meter.eval.times))


_FROZEN: list = []


def _freeze_once() -> None:
    """After the first Trainer run, move what it imported and cached (transformers' and
    accelerate's modules, state singletons) out of the collector's reach, as load_workload does
    for the model: the Trainer collects garbage at the start of every run (accelerate's
    free_memory), and a full collection over those objects cost ~0.08 s a trial."""
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN.append(True)


def _judged(run: TrainerRun, phase: str, budget: int) -> tuple[str, int | None, str | None]:
    """A phase's outcome. A run that failed in another phase still judges this one by what it
    measured (a validation run whose evaluation ran out of memory trained within the budget)."""
    window = run.train if phase == "train" else run.eval
    if run.outcome != "ran" and (run.failed_phase == phase or window.peak is None):
        where = "" if run.failed_phase == phase else f"in the {run.failed_phase} step before {phase}: "
        return run.outcome, window.peak, where + (run.message or run.outcome)
    if window.peak is None:
        return "error", None, f"the Trainer ran no {phase} step to measure"
    return ("fit" if window.peak <= budget else "over_budget"), window.peak, None


def _result(workload, run: TrainerRun, phase: str, settings: dict, budget: int, accumulation: int | None = None) -> TrialResult:
    outcome, peak, message = _judged(run, phase, budget)
    window = run.train if phase == "train" else run.eval
    step_time = window.step_time() if outcome in ("fit", "over_budget") else None
    if phase == "train":
        accumulation = accumulation or int(settings.get("gradient_accumulation_steps") or 1)
        batch = int(settings["per_device_train_batch_size"]) * accumulation
        steps = run.train_steps
    else:
        batch, steps = int(settings["per_device_eval_batch_size"]), run.eval_steps
    tokens = workload.tokens_per_batch(batch)
    return TrialResult(
        phase=phase, settings=settings, outcome=outcome, peak_bytes=peak, step_time_s=step_time,
        tokens_per_s=(tokens / step_time) if step_time else None, steps=steps, wall_s=run.wall_s, message=message,
        leaked_bytes=run.leaked if run.leaked > 0 else None, memory_stats=run.stats,
        step_time_spread=window.spread() if step_time else None,
    )


def _full(workload, settings: dict) -> dict:
    """Settings as run: checkpointing and attention default to the workload's current ones."""
    return {"gradient_checkpointing": workload.gradient_checkpointing, "attn_implementation": workload.attn_implementation,
            **settings}


def run_trial(workload, phase: str, settings: dict, steps: int, budget: int) -> TrialResult:
    """Run `phase` ("train" or "eval") at `settings` through the Trainer: `steps` optimizer steps
    for train; for eval, one optimizer step and then `steps` eval steps inside training (with
    --task eval: `steps` eval steps of `evaluate()` alone). Settings may carry the trial's own
    max_length / max_pixels / video_frames (a limit search): the worst case is built at them."""
    settings = _full(workload, settings)
    with workload.shaped(settings):
        return _run_phase(workload, phase, settings, steps, budget)


def _ranks() -> int:
    """Ranks training together. A rank over its budget cannot stop alone: its peers would wait for
    it in the next step's collectives (their agreement comes after the trial, cluster/agree.py)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _run_phase(workload, phase: str, settings: dict, steps: int, budget: int) -> TrialResult:
    if getattr(workload, "strategy", None):
        return _engine_trial(workload, phase, settings, steps, budget)
    if phase == "eval" and workload.spec.task == "eval":
        run = evaluate_with_trainer(workload, settings, steps)
    elif phase == "train":
        run = train_with_trainer(workload, settings, steps, stop_over=None if _ranks() > 1 else budget)  # a non-fit ends early
    elif phase == "eval":
        # The optimizer state exists after one step; the train batch is the configuration's, or 1.
        settings.setdefault("per_device_train_batch_size", 1)
        run = train_with_trainer(workload, settings, 1, eval_every=1, eval_steps=steps)
    else:
        raise ValueError(f"unknown trial phase {phase!r}")
    return _result(workload, run, phase, settings, budget)


def _engine_trial(workload, phase: str, settings: dict, steps: int, budget: int) -> TrialResult:
    """A model already wrapped by a sharding engine (the cluster workers): the step model of
    trials/step_model.py on it, until the Trainer's own DeepSpeed/FSDP path replaces it (issue #11)."""
    from . import step_model

    device = workload.device
    workload.configure(attn_implementation=settings.get("attn_implementation"),
                       gradient_checkpointing=bool(settings.get("gradient_checkpointing")))
    device.release()
    baseline = device.allocated_bytes()
    window, started = _Window(), time.perf_counter()
    run = TrainerRun(_Window(), _Window())
    try:
        if phase == "train":
            batch = int(settings["per_device_train_batch_size"])
            window.add_peak(step_model.train_steps(workload, batch, steps, timings=window.times)[0])
        elif workload.spec.task == "eval":  # evaluation alone: nothing trained before it
            window.add_peak(step_model.evaluate(workload, int(settings["per_device_eval_batch_size"]), steps, settings))
        else:
            window.add_peak(step_model.eval_steps(workload, int(settings["per_device_eval_batch_size"]), steps, settings))
    except Exception as exc:  # noqa: BLE001 - every failure becomes data
        run.outcome, run.failed_phase, run.message = ("oom" if device.is_oom(exc) else "error"), phase, short_message(exc)
    workload.release_grads()
    run.stats = device.memory_stats() or None
    if device.allocated_bytes() > baseline:
        gc.collect()
    device.release()
    run.leaked, run.wall_s = device.allocated_bytes() - baseline, round(time.perf_counter() - started, 4)
    setattr(run, phase, window)
    run.train_steps, run.eval_steps = (len(window.times), 0) if phase == "train" else (0, steps)
    return _result(workload, run, phase, settings, budget, accumulation=1)  # one micro-batch per step


def run_training(workload, settings: dict, steps: int, eval_steps: int, evaluations: int,
                 budget: int) -> tuple[TrialResult, TrialResult | None]:
    """The run a user launches, shortened: `steps` optimizer steps at `settings` (accumulation
    included), evaluating `eval_steps` batches `evaluations` times in the middle (when the
    settings have an eval batch). Returns the train and eval results."""
    settings = _full(workload, settings)
    evaluating = bool(settings.get("per_device_eval_batch_size")) and evaluations > 0
    every = max(1, steps // evaluations) if evaluating else None
    with workload.shaped(settings):
        run = train_with_trainer(workload, settings, steps, eval_every=every, eval_steps=eval_steps if evaluating else 0)
        train = _result(workload, run, "train", settings, budget)
        evaluation = _result(workload, run, "eval", settings, budget) if evaluating else None
    return train, evaluation


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

