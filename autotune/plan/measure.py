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

import time
from dataclasses import dataclass, field

import torch

from ..devices.fake import FakeDevice, materialise
from ..devices import short_message
from ..devices.sim import storage_bytes
from ..model.source import ModelSource, check_max_length, resolve
from ..spec import ProbeSpec
from ..trials.step_model import eval_steps as plan_eval_steps, train_steps as plan_train_steps
from ..errors import UsageError
from ..model.training_setup import plan_inputs, prepare
from ..model.workload import Workload, apply_lora, build_model, count_parameters

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

    @property
    def key(self) -> str:
        return f"{self.attn_implementation}/gc-{'on' if self.gradient_checkpointing else 'off'}"

    @property
    def train_line(self) -> Line:
        return Line.through(self.train_peaks)

    @property
    def eval_line(self) -> Line:
        return Line.through(self.eval_peaks)


class StepRecorder:
    """Splits the training step into phases with the optimizer's global step hooks and a forward
    hook on the output layer, without touching the step code itself."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self.counter = workload.device.counter
        self.steps = 0
        self.gradients = self.optimizer_state = self.step_transient = 0
        self.forward_backward_peak = self.step_peak = 0
        self.logits_bytes = 0
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
        if self.steps >= 1:  # from step 2 on, like the probe's peak (AdamW's state is lazy)
            self.forward_backward_peak = max(self.forward_backward_peak, self.counter.window_peak)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.gradients = storage_bytes(p.grad for p in params if p.grad is not None)
        self._before_step = self.counter.current
        self.counter.start_window()

    def _post(self, optimizer, args, kwargs) -> None:
        if self.steps >= 1:
            self.step_peak = max(self.step_peak, self.counter.window_peak)
            self.step_transient = max(self.step_transient, self.counter.window_peak - self._before_step)
            self.optimizer_state = storage_bytes(t for state in optimizer.state.values() for t in state.values())
        self.steps += 1
        self.counter.start_window()

    def _logits(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and module.training:
            self.logits_bytes = storage_bytes([output])


def plan_source(spec: ProbeSpec) -> ModelSource:
    """The model's config only: a plan never loads weights (random init has the same memory)."""
    source = resolve(spec.model, spec.model_config)
    check_max_length(source.config, spec.max_length)
    if source.kind == "weights":
        source = ModelSource("config", source.path, source.config)
    return source


class _Meta:
    torch_device = torch.device("meta")


def build_plan_workload(source: ModelSource, spec: ProbeSpec, device: FakeDevice) -> Workload:
    """Build on `meta` (no memory, no init), freeze and add LoRA there exactly as the probe does
    (same family setup), then materialise fake tensors."""
    if spec.train_type == "qlora":
        raise UsageError("--train-type", "qlora cannot be planned: bitsandbytes quantizes real weights, not fake tensors",
                         "plan --train-type lora for the adapters' cost, or probe qlora on a card")
    setup = plan_inputs(source, spec)
    model = prepare(build_model(source, spec, _Meta(), setup.family), setup, spec, _Meta(), apply_lora)
    materialise(model, device)
    model.train()
    device.adopt(list(model.parameters()) + list(model.buffers()))
    total, trainable = count_parameters(model)
    workload = Workload(model, source, spec, device, total, trainable, attn_implementation=spec.attn_implementation, setup=setup)
    workload.configure(gradient_checkpointing=spec.gradient_checkpointing)
    return workload


def measure_candidate(workload: Workload, attn: str, checkpointing: bool, steps: int = 2, eval_steps: int = 1,
                      batches=PLAN_BATCHES, eval_settings: dict | None = None) -> CandidateMeasure:
    """Run the probe's train and eval steps for one candidate at two batch sizes, under fake
    tensors. Never raises for an operation fake tensors cannot run: the error is recorded.
    Two optimizer steps suffice: the probe reads the peak from step 2 on, and under fake
    tensors every later step is identical (no allocator drift to wait for)."""
    started = time.perf_counter()
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
    for batch in batches:
        try:
            with StepRecorder(workload) as recorder:
                peak = plan_train_steps(workload, batch, steps)[0]  # its optimizer dies here
        except Exception as exc:  # noqa: BLE001 - an operator fake tensors cannot run is recorded
            result.error = f"training step at batch {batch} failed under fake tensors: {short_message(exc)}"
            workload.release_grads()
            break
        result.train_peaks[batch] = peak
        result.forward_backward_peaks[batch] = recorder.forward_backward_peak
        result.step_peaks[batch] = recorder.step_peak
        result.gradients, result.optimizer_state = recorder.gradients, recorder.optimizer_state
        result.step_transient = max(result.step_transient, recorder.step_transient)
        result.logits_per_sample = recorder.logits_bytes // batch
        try:
            result.eval_peaks[batch] = plan_eval_steps(workload, batch, max(eval_steps, 1), eval_settings or {})
        except Exception as exc:  # noqa: BLE001
            result.error = f"evaluation step at batch {batch} failed under fake tensors: {short_message(exc)}"
            workload.release_grads()
            break
    result.wall_s = round(time.perf_counter() - started, 3)
    return result
