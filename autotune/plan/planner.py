"""Plan without a GPU: a memory estimate for any model on a laptop, with a breakdown.

spec -> fake-tensor workload -> per (attention, checkpointing) candidate: the probe's own
train and eval steps at two batch sizes (plan_measure) -> rows and per-card frontiers
(plan_breakdown) -> `Plan`. `plan_recipe` turns a plan into a recipe marked planned, never
validated; `hint_from_plan` gives `probe --from-plan` its first batch size. Returns data; the
CLI prints.
"""

from __future__ import annotations

import datetime
import resource
import time
from dataclasses import asdict, dataclass, field

from .. import __version__
from ..devices import short_message
from ..devices.fake import FakeDevice
from ..errors import AutotuneError, UsageError
from ..search.global_batch import split_global_batch
from ..model.source import model_class
from .breakdown import Allowance, Rows, largest_batch, layer_bytes, peak_model, rows_for
from .measure import CandidateMeasure, build_plan_workload, measure_candidate, plan_source
from ..probe import ProgressSink, describe_model, library_versions
from ..recipe.schema import SCHEMA, Hardware, ModelInfo, Recipe, SearchRecord, Settings, TrialResult, Validation
from ..sizes import format_size
from ..search.space import attn_unsupported_by_model
from ..spec import ProbeSpec
from ..recipe.training_args import mixed_precision
from ..model.workload import TORCH_DTYPES

CHOICE_RULE = ("no gradient checkpointing where it fits (checkpointing recomputes the forward, ~20-35% more compute), "
               "then the largest train frontier; a probe on the real card measures throughput")


@dataclass
class PlanOptions:
    targets: list[int]  # card capacities in bytes
    attn: list[str] = field(default_factory=lambda: ["sdpa"])
    checkpointing: list[bool] = field(default_factory=lambda: [False, True])
    strategy: str | None = None  # zero2 | zero3 | fsdp; None: one device (or plain DDP)
    allowance: Allowance = field(default_factory=Allowance)


@dataclass
class Prediction:
    """One candidate on one card: frontiers and the split of the global batch."""

    capacity_bytes: int
    budget_bytes: int
    train_frontier: int
    eval_frontier: int
    live_peak_bytes: int | None  # at the train frontier (or at batch 1 when nothing fits)
    on_card_bytes: int | None  # the same with the allowance (context, workspaces, fragmentation)
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    global_batch_note: str | None = None


@dataclass
class CandidatePlan:
    measure: CandidateMeasure
    rows: Rows | None
    forward_backward_line: dict | None
    step_line: dict | None
    predictions: list[Prediction] = field(default_factory=list)

    def to_dict(self) -> dict:
        m = self.measure
        data = {"key": m.key, "attn_implementation": m.attn_implementation, "gradient_checkpointing": m.gradient_checkpointing,
                "measured_with": m.measured_with, "note": m.note, "error": m.error, "wall_s": m.wall_s,
                "train_peaks": m.train_peaks, "eval_peaks": m.eval_peaks}
        if m.error is None:
            data.update(train_line=asdict(m.train_line), eval_line=asdict(m.eval_line),
                        forward_backward_line=self.forward_backward_line, step_line=self.step_line,
                        rows=self.rows.as_dict(), predictions=[asdict(p) for p in self.predictions])
        return data


@dataclass
class Plan:
    spec: ProbeSpec
    model: ModelInfo
    options: PlanOptions
    margin: float
    candidates: list[CandidatePlan]
    choice: dict  # capacity (bytes) -> candidate key or None
    wall_s: float = 0.0
    peak_rss_bytes: int = 0

    def ok(self) -> list[CandidatePlan]:
        return [c for c in self.candidates if c.measure.error is None]

    def to_dict(self) -> dict:
        a = self.options.allowance
        return {
            "method": "fake tensors: the probe's train/eval steps at batch 1 and 2, live bytes counted; line fitted",
            "model": asdict(self.model), "max_length": self.spec.max_length, "world_size": self.spec.world_size,
            "strategy": self.options.strategy, "margin": self.margin, "targets": self.options.targets,
            "allowance": {"cuda_context_bytes": a.cuda_context, "workspaces_bytes": a.workspaces,
                          "fragmentation": a.fragmentation,
                          "note": "assumed, not measured: a CPU cannot see the CUDA context, cuBLAS workspaces or fragmentation"},
            "choice_rule": CHOICE_RULE, "choice": {str(k): v for k, v in self.choice.items()},
            "candidates": [c.to_dict() for c in self.candidates],
            "wall_s": self.wall_s, "peak_rss_bytes": self.peak_rss_bytes,
        }


def _predict(candidate: CandidatePlan, workload, spec: ProbeSpec, options: PlanOptions, margin: float,
             layers: tuple[int, int]) -> None:
    m = candidate.measure
    dtype_bytes = TORCH_DTYPES[spec.dtype].itemsize
    rows = rows_for(m, workload.trainable_params, dtype_bytes, options.strategy, spec.world_size, layers)
    model = peak_model(m, rows)
    candidate.rows = rows
    candidate.forward_backward_line, candidate.step_line = asdict(model.forward_backward), asdict(model.step)
    resident_saving = (m.weights - rows.weights) - rows.gathered_working_set  # eval holds the weights only
    for capacity in options.targets:
        budget = int(capacity * (1 - margin))
        train = largest_batch(model.live, budget, options.allowance, capacity, spec.max_batch_size)
        evaluate = largest_batch(lambda b: m.eval_line.at(b) - resident_saving, budget, options.allowance, capacity,
                                 spec.max_batch_size)
        live = model.live(max(train, 1))
        prediction = Prediction(capacity, budget, train, evaluate, round(live), round(options.allowance.on_card(live)))
        if train:
            split = split_global_batch(spec.global_batch_size, train, spec.world_size)
            prediction.per_device_train_batch_size, prediction.gradient_accumulation_steps = split.per_device, split.accumulation
            prediction.global_batch_note = split.note
        candidate.predictions.append(prediction)


def choose(candidates: list[CandidatePlan], index: int) -> str | None:
    """The planned choice for target `index` (see CHOICE_RULE)."""
    fitting = [c for c in candidates if c.measure.error is None and c.predictions[index].train_frontier > 0]
    if not fitting:
        return None
    best = min(fitting, key=lambda c: (c.measure.gradient_checkpointing, -c.predictions[index].train_frontier))
    return best.measure.key


def make_plan(spec: ProbeSpec, options: PlanOptions, progress: ProgressSink | None = None) -> Plan:
    progress = progress or ProgressSink()
    started = time.perf_counter()
    source = plan_source(spec)
    device = FakeDevice(max(options.targets))
    progress.stage(f"building {source.architecture} from {source.path} on fake tensors (no memory is allocated)")
    # Built with sdpa (eager where the model has no sdpa): every candidate switches attention in
    # place (flash-attn may be missing here); one the model does not support reports why.
    cls = model_class(source.config)
    built_with = "eager" if attn_unsupported_by_model("sdpa", cls) else "sdpa"
    try:
        workload = build_plan_workload(source, spec.replace(attn_implementation=built_with), device)
    except AutotuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - say what failed, never a traceback
        raise AutotuneError(f"cannot build {source.architecture} on the meta device and fake tensors: {short_message(exc)}",
                            "probe it on a real card instead") from exc
    workload.spec = spec
    layers = layer_bytes(workload.model)
    candidates = []
    for attn in options.attn:
        for checkpointing in options.checkpointing:
            unsupported = attn_unsupported_by_model(attn, cls)
            if unsupported:  # skipped with the reason, as the probe skips it
                candidate = CandidatePlan(CandidateMeasure(attn, checkpointing, attn, error=unsupported), None, None, None)
                candidates.append(candidate)
                continue
            progress.stage(f"running train and eval steps at batch 1 and 2: attn {attn}, checkpointing {'on' if checkpointing else 'off'}")
            candidate = CandidatePlan(measure_candidate(workload, attn, checkpointing, eval_steps=spec.eval_steps,
                                                        eval_settings=spec.eval_keep_settings()), None, None, None)
            if candidate.measure.error is None:
                _predict(candidate, workload, spec, options, spec.margin, layers)
            candidates.append(candidate)
    if not any(c.measure.error is None for c in candidates):
        raise AutotuneError(f"no candidate could run under fake tensors: {candidates[0].measure.error}",
                            "rerun with AUTOTUNE_DEBUG=1, or probe on a real card")
    choice = {capacity: choose(candidates, i) for i, capacity in enumerate(options.targets)}
    return Plan(spec, describe_model(workload), options, spec.margin, candidates, choice,
                wall_s=round(time.perf_counter() - started, 3),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ---------------------------------------------------------------- recipes


def plan_recipe(plan: Plan) -> Recipe:
    """A recipe for the plan's single target card, marked planned: `validation.passed` is false
    and `validation.method` is "planned" (emit refuses it unless told otherwise)."""
    if len(plan.options.targets) != 1:
        raise UsageError("--out", "a plan recipe is for one card", "give a single --gpu-memory with --out")
    capacity = plan.options.targets[0]
    key = plan.choice[capacity]
    if key is None:
        raise UsageError("--out", f"nothing fits a {format_size(capacity)} card in this plan, so there is no recipe to write",
                         "try --train-type lora, --gradient-checkpointing, a shorter --max-length, or more memory")
    chosen = next(c for c in plan.candidates if c.measure.key == key)
    p, m, spec = chosen.predictions[0], chosen.measure, plan.spec
    settings = Settings(per_device_train_batch_size=p.per_device_train_batch_size,
                        gradient_accumulation_steps=p.gradient_accumulation_steps,
                        per_device_eval_batch_size=p.eval_frontier or None, prediction_loss_only=spec.eval_keeps == "loss",
                        eval_outputs=spec.eval_keeps, eval_accumulation_steps=spec.eval_keep_settings().get("eval_accumulation_steps"),
                        gradient_checkpointing=m.gradient_checkpointing, attn_implementation=m.attn_implementation,
                        torch_dtype=spec.dtype, mixed_precision=mixed_precision(spec.dtype), max_length=spec.max_length,
                        strategy=plan.options.strategy)
    trials = [TrialResult(phase=phase, settings={"attn_implementation": c.measure.measured_with,
                                                 "gradient_checkpointing": c.measure.gradient_checkpointing, key_: b},
                          outcome="planned", peak_bytes=peak, message="fake tensors: peak measured, nothing allocated")
              for c in plan.ok() for phase, key_, peaks in (("train", "per_device_train_batch_size", c.measure.train_peaks),
                                                            ("eval", "per_device_eval_batch_size", c.measure.eval_peaks))
              for b, peak in peaks.items()]
    split = split_global_batch(spec.global_batch_size, p.train_frontier, spec.world_size)
    search = SearchRecord(margin=plan.margin, capacity_bytes=capacity, budget_bytes=p.budget_bytes,
                          max_batch_size=spec.max_batch_size, steps_per_trial=2,
                          frontier={"train": p.train_frontier, "eval": p.eval_frontier},
                          global_batch_size=spec.global_batch_size, effective_global_batch_size=split.effective,
                          global_batch_exact=split.exact, global_batch_note=split.note, trials=trials, wall_s=plan.wall_s)
    hardware = Hardware(device="plan", name=f"planned {format_size(capacity)} card", capacity_bytes=capacity,
                        device_count=spec.world_size, world_size=spec.world_size, **library_versions())
    validation = Validation(passed=False, method="planned", peak_bytes=p.live_peak_bytes,
                            headroom_bytes=p.budget_bytes - p.live_peak_bytes if p.live_peak_bytes else None,
                            message="planned under fake tensors, never run on a GPU: probe it (probe --from-plan) before use")
    return Recipe(schema=SCHEMA, model=plan.model, hardware=hardware, settings=settings, search=search,
                  validation=validation, plan=plan.to_dict(),
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  autotune_version=__version__)


def hint_from_plan(recipe: Recipe, spec: ProbeSpec, budget: int) -> int | None:
    """The batch size a probe should try first: where the plan's line for this probe's
    (attention, checkpointing) crosses this device's budget. None: the plan has no such line."""
    if not recipe.plan:
        raise UsageError("--from-plan", "this recipe holds no plan", "write one with `python -m autotune plan ... --out PLAN`")
    model = recipe.model
    for name, planned, probed in (("--max-length", model.max_length, spec.max_length), ("--train-type", model.train_type, spec.train_type),
                                  ("--dtype", model.dtype, spec.dtype)):
        if planned != probed:
            raise UsageError("--from-plan", f"the plan was made for {name} {planned}, this probe uses {probed}",
                             f"probe with {name} {planned}, or plan again")
    for candidate in recipe.plan.get("candidates", []):
        if (candidate.get("attn_implementation") == spec.attn_implementation
                and candidate.get("gradient_checkpointing") == spec.gradient_checkpointing and candidate.get("train_line")):
            fb, step = candidate["forward_backward_line"], candidate["step_line"]
            live = lambda b: max(fb["intercept"] + fb["slope"] * b, step["intercept"] + step["slope"] * b)  # noqa: E731
            return largest_batch(live, budget, Allowance(0, 0, 0.0), 2**62, spec.max_batch_size) or 1
    return None
