"""Measure a plan: run the probe's own training and evaluation steps under fake tensors and
count live bytes with the sim device's counter.

For each (attention, checkpointing) candidate the plan runs `step_model` (the Trainer's step as
it acts on memory: fake tensors cannot run the Trainer itself) at two batch sizes, fits the line
peak = intercept + slope x batch (peak is affine in batch size), and splits the step into
rows (weights, gradients, optimizer state, the optimizer step's transient, activations and
logits per sample) with optimizer and forward hooks. `plan_breakdown` turns the measurement
into a per-card, per-rank prediction; `plan` orchestrates.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from ..devices.fake import FakeDevice, materialise
from ..devices import short_message
from ..devices.sim import storage_bytes
from ..model.source import ModelSource, check_max_length, resolve
from ..spec import ProbeSpec
from ..trials import rlhf_step_model, step_model
from ..errors import UsageError
from ..model.training_setup import family_targets, plan_inputs, prepare
from ..model.workload import Workload, apply_lora, build_model, count_parameters
from ..recipe.lora import alike_in_every_layer
from .rope import positions_once_per_layout
from .rlhf import build_frozen_models, frozen_models

PLAN_BATCHES = (1, 2)  # two points give the line; peak is affine in batch size
# On a CPU-only machine flash-attn cannot be imported. Its memory is linear in the sequence,
# like sdpa's fused CPU kernel, so a flash_attention_2 candidate is measured with sdpa, labelled.
_STAND_IN = {"flash_attention_2": "sdpa"}


@dataclass
class Line:
    intercept: float
    slope: float

    def at(self, batch: int) -> float:
        return self.intercept + self.slope * batch

    @classmethod
    def through(cls, points: dict[int, int]) -> "Line":
        (b0, p0), (b1, p1) = sorted(points.items())[:2]
        slope = (p1 - p0) / (b1 - b0)
        return cls(p0 - slope * b0, slope)


@dataclass
class CandidateMeasure:
    """What running one candidate under fake tensors measured (bytes)."""

    attn_implementation: str
    gradient_checkpointing: bool
    measured_with: str  # the attention actually run (a stand-in where the requested one cannot run here)
    train_peaks: dict = field(default_factory=dict)  # batch -> peak over steps 2.. (what a probe trial reports)
    eval_peaks: dict = field(default_factory=dict)
    forward_backward_peaks: dict = field(default_factory=dict)  # batch -> peak outside optimizer.step()
    step_peaks: dict = field(default_factory=dict)  # batch -> peak inside optimizer.step()
    weights: int = 0  # parameters and buffers
    gradients: int = 0  # .grad of the trainable parameters when optimizer.step() starts
    optimizer_state: int = 0
    step_transient: int = 0  # extra bytes inside optimizer.step() (e.g. foreach/fused temporaries)
    logits_per_sample: int = 0  # the output layer's logits, per sample
    error: str | None = None
    note: str | None = None
    wall_s: float = 0.0
    eval_after: str | None = None  # eval_peaks were measured after a train step at this "batch x accumulation"

    @property
    def key(self) -> str:
        return f"{self.attn_implementation}/gc-{'on' if self.gradient_checkpointing else 'off'}"

    @property
    def train_line(self) -> Line:
        return Line.through(self.train_peaks)

    @property
    def eval_line(self) -> Line:
        return Line.through(self.eval_peaks)

    @property
    def forward_backward_line(self) -> Line:
        return Line.through(self.forward_backward_peaks)

    @property
    def step_line(self) -> Line:
        return Line.through(self.step_peaks)


class StepRecorder:
    """Splits one training step into phases with the optimizer's global step hooks and a forward
    hook on the output layer, without touching the step code itself."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self.counter = workload.device.counter
        self.gradients = self.optimizer_state = self.step_transient = 0
        self.forward_backward_peak = self.step_peak = 0
        self.logits_bytes = 0
        self.split = 0  # where the optimizer step starts in the counter's timeline
        self._before_step = 0
        self._handles = []

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        head = self.workload.model.get_output_embeddings()
        if head is not None:
            self._handles.append(head.register_forward_hook(self._logits))
        self.counter.start_window()
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False

    def _pre(self, optimizer, args, kwargs) -> None:
        self.forward_backward_peak = self.counter.window_peak
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.gradients = storage_bytes(p.grad for p in params if p.grad is not None)
        self.split = len(self.counter.timeline or ())
        self._before_step = self.counter.current
        self.counter.start_window()

    def _post(self, optimizer, args, kwargs) -> None:
        self.step_peak = self.counter.window_peak
        self.step_transient = self.counter.window_peak - self._before_step
        self.optimizer_state = storage_bytes(t for state in optimizer.state.values() for t in state.values())
        self.counter.start_window()

    def _logits(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and module.training:
            self.logits_bytes = storage_bytes([output])


@dataclass
class TrainPoint:
    """One training step (step 2 on: the optimizer state exists) at one batch size."""

    peak: int
    forward_backward: int  # the peak outside optimizer.step()
    step: int  # the peak inside it
    timeline: list  # live bytes after each allocation from the step's start (plan/frontier.py's envelope)
    split: int  # timeline[:split] is forward/backward, timeline[split:] the optimizer step
    rollout: int = 0  # RLHF: live bytes when the rollout engine generates (its share not included)


@dataclass
class EvalPoint:
    peak: int
    timeline: list
    rollout: int = 0  # RLHF: live bytes when the rollout engine generates (its share not included)


class StepFailed(Exception):
    """An operator fake tensors cannot run; the message says which phase and batch."""


def plan_source(spec: ProbeSpec) -> ModelSource:
    """The model's config only: a plan never loads weights (random init has the same memory)."""
    source = resolve(spec.model, spec.model_config)
    check_max_length(source.config, spec.max_length)
    if source.kind == "weights":
        source = ModelSource("config", source.path, source.config)
    return source


class _Meta:
    torch_device = torch.device("meta")


def build_plan_workload(source: ModelSource, spec: ProbeSpec, device: FakeDevice, fake: bool = True,
                        adapters: bool = True) -> Workload:
    """Build on `meta` (no memory, no init), freeze and add LoRA there exactly as the probe does
    (same family setup), then materialise fake tensors (`fake`; else it stays on `meta` until
    `to_fake`: a full-depth model whose shallow copies run the steps only counts parameters).
    `adapters=False`: where LoRA makes the same adapters in every layer (all-linear, a family's
    unfrozen parts, a layer's own module names; not a regex or a dotted path, not RLHF), the
    model is left without them and `adapters_left_out` is set: a full-depth model that only
    chooses the depth (plan/planner.py plan_workloads adds them if it runs at full depth)."""
    if spec.train_type == "qlora":
        raise UsageError("--train-type", "qlora cannot be planned: bitsandbytes quantizes real weights, not fake tensors",
                         "plan --train-type lora for the adapters' cost, or probe qlora on a card")
    setup = plan_inputs(source, spec)
    model = build_model(source, spec, _Meta(), setup.family)
    left_out = (not adapters and spec.train_type == "lora" and spec.rlhf is None
                and alike_in_every_layer(spec.lora_target_modules, spec.lora_target_regex))
    if not left_out:
        model = prepare(model, setup, spec, _Meta(), functools.partial(apply_lora, on_meta=True))
    else:
        family_targets(model, setup, spec)  # the recipe's peft regex, from the model the adapters would go on
    model.train()
    positions_once_per_layout(model)  # the worst case's rows are alike (plan/rope.py)
    total, trainable = count_parameters(model)
    workload = Workload(model, source, spec, device, total, trainable, attn_implementation=spec.attn_implementation, setup=setup)
    workload.adapters_left_out = left_out
    workload.configure(gradient_checkpointing=spec.gradient_checkpointing)
    if spec.rlhf is not None:
        build_frozen_models(workload, setup)
    if fake:
        to_fake(workload)
    return workload


def to_fake(workload: Workload) -> None:
    """Materialise the model (and an RLHF run's reference and reward models) as fake tensors on the
    workload's device, charged to its counter."""
    for model in (workload.model, *frozen_models(workload)):
        materialise(model, workload.device)
        workload.device.adopt(list(model.parameters()) + list(model.buffers()))


class CandidateSteps:
    """One candidate's training and evaluation steps under fake tensors, each batch measured once,
    in whatever order a search asks for them (plan/frontier.py). Training steps share one optimizer
    after a first step that creates its state (the probe reads its peak from step 2 on; under
    fake tensors every later step is identical). Evaluations run after one optimizer step at a
    given train batch and accumulation, as the Trainer's evaluations inside training do; the
    training steps' optimizer is gone by then, so it is not counted twice."""

    def __init__(self, workload: Workload, result: "CandidateMeasure", eval_steps: int = 2, eval_settings: dict | None = None,
                 accumulation=None):
        self.workload, self.result = workload, result
        self.eval_steps, self.eval_settings = max(eval_steps, 1), eval_settings or {}
        self.accumulation = accumulation or (lambda batch: 1)  # train batch -> accumulation (the global batch kept)
        self.train_points: dict[int, TrainPoint] = {}
        self.eval_points: dict[tuple, EvalPoint] = {}  # (train batch, accumulation, eval batch)
        self._state: tuple | None = None  # the optimizer (train), or what the step before an evaluation left
        self._open: tuple | None = None  # ("train",) or ("eval", train batch, accumulation)

    def train(self, batch: int) -> TrainPoint:
        if batch not in self.train_points:
            device = self.workload.device
            try:
                self._enter(("train",))
                moments: list = []
                with device.timeline(), self._stepping(self._state[0], moments) as step:
                    device.reset_peak()
                    with StepRecorder(self.workload) as recorder:
                        step(batch, self.accumulation(batch))
                    timeline = list(device.counter.timeline)
            except Exception as exc:  # noqa: BLE001 - an operator fake tensors cannot run is recorded
                self.close()
                raise StepFailed(f"training step at batch {batch} failed under fake tensors: {short_message(exc)}") from exc
            point = TrainPoint(device.peak_bytes(), recorder.forward_backward_peak, recorder.step_peak, timeline, recorder.split,
                               max(moments, default=0))
            self.train_points[batch] = point
            r = self.result
            r.train_peaks[batch], r.forward_backward_peaks[batch], r.step_peaks[batch] = point.peak, point.forward_backward, point.step
            if len(r.train_peaks) == 1:  # the rows: what one step holds
                r.gradients, r.optimizer_state = recorder.gradients, recorder.optimizer_state
                r.logits_per_sample = recorder.logits_bytes // batch
            r.step_transient = max(r.step_transient, recorder.step_transient)
        return self.train_points[batch]

    def eval(self, train_batch: int, accumulation: int, batch: int) -> EvalPoint:
        key = (train_batch, accumulation, batch)
        if key not in self.eval_points:
            device = self.workload.device
            try:
                self._enter(("eval", train_batch, accumulation))
                moments: list = []
                with device.timeline():
                    settings = self._settings(train_batch, accumulation)
                    if self.workload.spec.rlhf is not None:
                        peak = rlhf_step_model.evaluate(self.workload, batch, self.eval_steps, settings, moments=moments)
                    else:
                        peak = step_model.evaluate(self.workload, batch, self.eval_steps, settings, first_forward=False)
                    timeline = list(device.counter.timeline)
            except Exception as exc:  # noqa: BLE001
                self.close()
                raise StepFailed(f"evaluation step at batch {batch} failed under fake tensors: {short_message(exc)}") from exc
            self.eval_points[key] = EvalPoint(peak, timeline, max(moments, default=0))
            if self.result.eval_after in (None, f"{train_batch}x{accumulation}"):
                self.result.eval_after = f"{train_batch}x{accumulation}"
                self.result.eval_peaks[batch] = peak
        return self.eval_points[key]

    def _settings(self, train_batch: int, accumulation: int) -> dict:
        return {**self.eval_settings, "per_device_train_batch_size": train_batch, "gradient_accumulation_steps": accumulation}

    def _enter(self, what: tuple) -> None:
        """Hold the state the next steps start from: the optimizer after its first step, or what
        the optimizer step before an evaluation leaves. Nothing stays entered between calls (the
        shallow copies of plan/depth.py each have their own fake-tensor modes)."""
        if self._open == what:
            return
        self.close()
        workload = self.workload
        if workload.spec.rlhf is not None:  # a real first step: it also fills GRPO's buffered generation
            if what[0] == "train":
                optimizer = rlhf_step_model.GRPOState(workload.make_optimizer())
                with self._stepping(optimizer) as step:
                    step(1)
                self._state = (optimizer,)
            else:
                self._state = rlhf_step_model.train_before_eval(workload, self._settings(*what[1:]))
        elif what[0] == "train":
            self._state = (first_step_state(workload),)
        else:
            # What the optimizer step before an evaluation leaves (step_model.train_before_eval):
            # the state, and that step's micro-batches, which the Trainer still holds.
            optimizer = first_step_state(workload)
            with workload.device.tracking():
                held = [step_model.device_batch(workload, what[1]) for _ in range(max(what[2], 1))]
            self._state = (optimizer, held)
        self._open = what

    def _stepping(self, optimizer, moments: list | None = None):
        if self.workload.spec.rlhf is not None:
            return rlhf_step_model.stepping(self.workload, optimizer, moments=moments)
        return step_model.stepping(self.workload, optimizer)

    def close(self) -> None:
        self._state, self._open = None, None
        self.workload.release_grads()


def first_step_state(workload: Workload):
    """A fresh optimizer holding what its first step leaves: the state of every trainable
    parameter, made by one step over zero gradients (then `zero_grad`, as the Trainer does). A
    step's forward and backward leave nothing else behind (the gradients are set to None and
    the batch is gone), so the live bytes are those of a real first step, at no forward's cost:
    the plan measures steps 2.. from here, as the probe's callback reads them."""
    optimizer = workload.make_optimizer()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with workload.device.tracking(), torch.no_grad():
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer


def switch_candidate(workload: Workload, attn: str, checkpointing: bool) -> "CandidateMeasure":
    """Switch the workload to the candidate (a stand-in attention where the requested one
    cannot run here); the returned measure is empty, or carries the reason it cannot run."""
    result = CandidateMeasure(attn, checkpointing, attn)
    try:
        workload.configure(attn_implementation=attn, gradient_checkpointing=checkpointing)
    except (ImportError, ValueError) as exc:
        stand_in = _STAND_IN.get(attn)
        if stand_in is None:
            result.error = f"cannot switch to {attn}: {str(exc).splitlines()[0]}"
            return result
        workload.configure(attn_implementation=stand_in, gradient_checkpointing=checkpointing)
        result.measured_with = stand_in
        result.note = f"{attn} cannot run on this machine; measured with {stand_in} (also linear in the sequence length)"
    result.weights = storage_bytes(list(workload.model.parameters()) + list(workload.model.buffers()))
    return result


def measure_candidate(workload: Workload, attn: str, checkpointing: bool, eval_steps: int = 1,
                      batches=PLAN_BATCHES, eval_settings: dict | None = None) -> CandidateMeasure:
    """The candidate's train steps and its evaluations (after a train step at batch 1) at
    `batches`, under fake tensors. Never raises for an operation fake tensors cannot run: the
    error is recorded. (A plan searches instead: plan/frontier.py.)"""
    started = time.perf_counter()
    result = switch_candidate(workload, attn, checkpointing)
    if result.error:
        return result
    steps = CandidateSteps(workload, result, eval_steps, eval_settings)
    try:
        for batch in batches:
            steps.train(batch)
        for batch in batches:
            steps.eval(1, 1, batch)
    except StepFailed as exc:
        result.error = str(exc)
    finally:
        steps.close()
    result.wall_s = round(time.perf_counter() - started, 3)
    return result
