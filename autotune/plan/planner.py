"""Plan without a GPU: a memory estimate for any model on a laptop, with a breakdown.

spec -> fake-tensor workload -> per (attention, checkpointing) candidate: the probe's own
train and eval steps at two batch sizes (plan_measure) -> rows and per-card frontiers
(plan_breakdown) -> `Plan`. `planned_recipe.plan_recipe` turns a plan into a recipe marked
planned, never validated; `hint_from_plan` gives `probe --from-plan` its first batch size. Returns data; the
CLI prints.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from dataclasses import asdict, dataclass, field

from ..devices import short_message
from ..devices.fake import FakeDevice
from ..errors import AutotuneError
from ..search.global_batch import split_global_batch
from ..model.source import ModelSource, model_class
from .breakdown import (Allowance, Rows, allowed_eval, frozen_bytes, frozen_saving, gathered_layers, generation_shift, layer_bytes,
                        peak_model, rollout_on_card, rows_for, syncs_whole_policy, with_share)
from .match import config_sizes
from .measure import CandidateMeasure, StepFailed, build_plan_workload, plan_source, to_fake
from .rlhf import full_depth_reason
from .copies import ShallowCopies, candidate_steps
from .depth import DepthChoice, Unsound, choose_depth, shallow_config
from .frontier import SEED_BATCHES, eval_curve, exact_frontier, train_curve
from ..describe import describe_model
from ..progress import ProgressSink
from ..recipe.lora import alike_in_every_layer
from ..recipe.schema import ModelInfo
from ..search.attention import attn_unsupported_by_model
from ..spec import ProbeSpec
from ..model.workload import TORCH_DTYPES

CHOICE_RULE = ("a candidate whose mid-training evaluation fits at eval batch 1 or more; "
               "no gradient checkpointing where it fits (checkpointing recomputes the forward, ~20-35% more compute), "
               "then the largest train frontier; a probe on the real card measures throughput")


@dataclass
class PlanOptions:
    targets: list[int]  # card capacities in bytes
    attn: list[str] = field(default_factory=lambda: ["sdpa"])
    checkpointing: list[bool] = field(default_factory=lambda: [False, True])
    strategy: str | None = None  # zero2 | zero3 | fsdp; None: one device (or plain DDP)
    allowance: Allowance = field(default_factory=Allowance)
    depth: str = "auto"  # auto: shallow copies extended to the real depth where the layers repeat; full: the whole model


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
    eval_peak_bytes: int | None = None  # at the eval frontier (or at batch 1 when nothing fits)
    train_trials: int = 0  # fake-tensor steps the exact search measured (the seeds at batch 1 and 2 included when it visited them)
    eval_trials: int = 0
    eval_after: str | None = None  # the eval frontier is after a train step at this "batch x accumulation"
    rollout: dict | None = None  # RLHF, a colocated engine: its share on this card (plan/breakdown.py rollout_on_card)
    # The run at the chosen settings, each a fake-tensor step (None when nothing fits): the train
    # step at per_device_train_batch_size x gradient_accumulation_steps, and the larger of it and
    # the evaluation at the eval frontier after it (eval_peak_bytes), without and with the allowance.
    train_peak_bytes: int | None = None
    run_peak_bytes: int | None = None
    run_on_card_bytes: int | None = None


@dataclass
class CandidatePlan:
    measure: CandidateMeasure
    rows: Rows | None
    forward_backward_line: dict | None
    step_line: dict | None
    predictions: list[Prediction] = field(default_factory=list)
    train_points: dict = field(default_factory=dict)  # batch -> per-rank live train peak, every batch measured
    eval_points: dict = field(default_factory=dict)  # the same for evaluation, after the first card's train batch
    envelope: bool = False  # the seed steps allocated in the same order: the first trials came from their envelope
    depth_fallback: str | None = None  # how the candidate covered the depth where the plan's copies could not (plan_candidate)

    def to_dict(self) -> dict:
        m = self.measure
        data = {"key": m.key, "attn_implementation": m.attn_implementation, "gradient_checkpointing": m.gradient_checkpointing,
                "measured_with": m.measured_with, "note": m.note, "error": m.error, "wall_s": m.wall_s,
                "train_peaks": m.train_peaks, "eval_peaks": m.eval_peaks}
        if m.error is None:
            data.update(train_line=asdict(m.train_line), eval_line=asdict(m.eval_line),
                        forward_backward_line=self.forward_backward_line, step_line=self.step_line,
                        rows=self.rows.as_dict(), predictions=[asdict(p) for p in self.predictions],
                        train_points=self.train_points, eval_points=self.eval_points,
                        started_from="envelope" if self.envelope else "line")
        return data


@dataclass
class Plan:
    spec: ProbeSpec
    model: ModelInfo
    options: PlanOptions
    margin: float
    candidates: list[CandidatePlan]
    choice: dict  # capacity (bytes) -> candidate key or None
    wall_s: float = 0.0  # the whole plan, import_s included
    import_s: float = 0.0  # of which: importing the libraries the plan runs (load_libraries)
    cpu_s: float = 0.0  # process CPU seconds over the plan (on a shared machine, the comparable figure)
    import_cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    depth: str = ""  # how the plan covered the model's depth (plan/depth.py)
    workload: object = None  # the full-depth workload, on meta where shallow copies ran (the RLHF record reads its rollout sizing)
    model_sizes: dict = field(default_factory=dict)  # the config's sizes, which probe --from-plan checks (plan/match.py)

    def ok(self) -> list[CandidatePlan]:
        return [c for c in self.candidates if c.measure.error is None]

    def to_dict(self) -> dict:
        a = self.options.allowance
        return {
            "method": ("fake tensors: the probe's train/eval steps, live bytes counted; each frontier searched as the "
                       "probe searches it (a fit at k and a non-fit at k+1 measured), starting from batches 2 and 3"),
            "model": asdict(self.model), "model_sizes": self.model_sizes, "max_length": self.spec.max_length, "world_size": self.spec.world_size,
            "strategy": self.options.strategy, "margin": self.margin, "targets": self.options.targets,
            "allowance": {"cuda_context_bytes": a.cuda_context, "workspaces_bytes": a.workspaces,
                          "fragmentation": a.fragmentation,
                          "note": "assumed, not measured: a CPU cannot see the CUDA context, cuBLAS workspaces or fragmentation"},
            "choice_rule": CHOICE_RULE, "choice": {str(k): v for k, v in self.choice.items()},
            "candidates": [c.to_dict() for c in self.candidates],
            "depth": self.depth, "wall_s": self.wall_s, "import_s": self.import_s,
            "cpu_s": self.cpu_s, "import_cpu_s": self.import_cpu_s, "peak_rss_bytes": self.peak_rss_bytes,
        }


def _predict(candidate: CandidatePlan, steps, workload, spec: ProbeSpec, options: PlanOptions, margin: float,
             layers: tuple[int, int]) -> None:
    """Per card: the exact train frontier (plan/frontier.py), then the exact eval frontier after a
    train step at the batch and accumulation the plan chose for that card (as the probe
    searches the eval frontier of its winner)."""
    m = candidate.measure
    for batch in SEED_BATCHES:
        steps.train(batch)
    frozen, layers = frozen_bytes(workload), gathered_layers(workload, options.strategy, layers)
    rows = rows_for(m, workload.trainable_params, TORCH_DTYPES[spec.dtype].itemsize, options.strategy, spec.world_size, layers, frozen)
    model = peak_model(m, rows, frozen)
    candidate.rows = rows
    candidate.forward_backward_line, candidate.step_line = asdict(model.forward_backward), asdict(model.step)
    shift_fb, shift_step = model.forward_backward.intercept - m.forward_backward_line.intercept, model.step.intercept - m.step_line.intercept
    resident_saving = (m.weights - rows.weights) + frozen_saving(rows, frozen) - rows.gathered_working_set  # eval: the weights only
    base_live = lambda b: max(steps.train(b).forward_backward + shift_fb, steps.train(b).step + shift_step)  # noqa: E731
    whole_sync = syncs_whole_policy(spec, options.strategy)
    at_generation = generation_shift(m, rows, frozen, whole_sync)
    base_predicted, candidate.envelope = train_curve(steps, shift_fb, shift_step)
    searches = []
    for capacity in options.targets:
        budget = int(capacity * (1 - margin))
        share = rollout_on_card(workload, capacity)
        live = with_share(base_live, lambda b: steps.train(b).rollout + at_generation, share, whole_sync)
        generating = max(steps.train(b).rollout for b in SEED_BATCHES) + at_generation
        predicted = with_share(base_predicted, lambda b: generating, share, whole_sync)  # noqa: B023
        search = exact_frontier(live, predicted, budget, capacity, options.allowance, spec.max_batch_size)
        searches.append((capacity, budget, search, share, live))
        train = search.frontier
        live_peak = live(max(train, 1))
        prediction = Prediction(capacity, budget, train, 0, round(live_peak), round(options.allowance.on_card(live_peak)),
                                train_trials=len(search.points), rollout=share)
        if train:
            split = split_global_batch(spec.global_batch_size, train, spec.world_size)
            prediction.per_device_train_batch_size, prediction.gradient_accumulation_steps = split.per_device, split.accumulation
            prediction.global_batch_note = split.note
            prediction.train_peak_bytes = round(live(split.per_device))  # its steps keep the global batch: the split's accumulation
        candidate.predictions.append(prediction)
    candidate.train_points = {b: round(searches[0][4](b)) for b in sorted(steps.train_points)}
    for prediction, (capacity, budget, _, share, _) in zip(candidate.predictions, searches):
        after = (prediction.per_device_train_batch_size or 1, prediction.gradient_accumulation_steps or 1)
        evaluate = with_share(lambda b: steps.eval(*after, b).peak - resident_saving,  # noqa: B023
                              lambda b: steps.eval(*after, b).rollout + at_generation, share, whole_sync)  # noqa: B023
        for batch in SEED_BATCHES:
            steps.eval(*after, batch)
        eval_base, _ = eval_curve(steps, after, -resident_saving)
        generating = max(steps.eval(*after, b).rollout for b in SEED_BATCHES) + at_generation
        eval_predicted = with_share(eval_base, lambda b: generating, share, whole_sync)  # noqa: B023
        search = exact_frontier(evaluate, eval_predicted, budget, capacity, options.allowance, spec.max_batch_size)
        prediction.eval_frontier, prediction.eval_trials = allowed_eval(spec, search.frontier), len(search.points)
        prediction.eval_peak_bytes = round(evaluate(max(prediction.eval_frontier, 1)))  # at the batch the rules allow
        prediction.eval_after = f"{after[0]}x{after[1]}"
        if prediction.train_peak_bytes is not None:
            run = max(prediction.train_peak_bytes, prediction.eval_peak_bytes if prediction.eval_frontier else 0)
            prediction.run_peak_bytes, prediction.run_on_card_bytes = run, round(options.allowance.on_card(run))
        if not candidate.eval_points:
            candidate.eval_points = {key[2]: round(evaluate(key[2])) for key in sorted(steps.eval_points) if key[:2] == after}


def choose(candidates: list[CandidatePlan], index: int, evaluating: bool = True) -> str | None:
    """The planned choice for target `index` (see CHOICE_RULE). Where the run evaluates, only a
    candidate whose evaluation fits after its train step (eval frontier > 0), as the probe's
    validation requires; None when no candidate qualifies (no_choice_reason says why)."""
    fitting = [c for c in candidates if c.measure.error is None and c.predictions[index].train_frontier > 0
               and (c.predictions[index].eval_frontier > 0 or not evaluating)]
    if not fitting:
        return None
    best = min(fitting, key=lambda c: (c.measure.gradient_checkpointing, -c.predictions[index].train_frontier))
    return best.measure.key


def no_choice_reason(plan: Plan, index: int) -> str:
    """Why the plan chose nothing for target `index`: nothing trains, or training fits and no
    candidate's evaluation does (the probe's validation would fail the same way)."""
    trains = [c for c in plan.ok() if c.predictions[index].train_frontier > 0]
    if not trains:
        return "even batch size 1 does not train"
    best = max(trains, key=lambda c: c.predictions[index].train_frontier)
    p = best.predictions[index]
    rlhf = plan.spec.rlhf
    groups = (f" (or holds no whole group of --num-generations {rlhf.generations})" if rlhf is not None else "")
    return (f"training fits ({best.measure.key} up to batch {p.train_frontier}), but no candidate's mid-training "
            f"evaluation fits at eval batch 1 after its train step{groups}, with eval outputs {plan.spec.eval_keeps}")


def no_choice_hint(plan: Plan, index: int) -> str:
    if any(c.predictions[index].train_frontier > 0 for c in plan.ok()):
        keeps = "--eval-outputs loss (the Trainer without compute_metrics), " if plan.spec.eval_keeps != "loss" else ""
        return f"try {keeps}a shorter --max-length, or more memory"
    return "try --train-type lora, --gradient-checkpointing, a shorter --max-length, or more memory"


def plan_candidate(workload, attn: str, checkpointing: bool, spec: ProbeSpec, options: PlanOptions,
                   layers: tuple[int, int], shallow: list | None = None, depth: DepthChoice | None = None) -> CandidatePlan:
    """One candidate: its exact frontiers per card, or the reason fake tensors could not run it.
    Where the copies' base leaves a kind out and a step fails its check (depth.Unsound), the
    candidate is planned again on the fallback copies (reusing the steps measured on copies
    the two share), and `depth_fallback` says why."""
    started = time.perf_counter()
    steps, measure = candidate_steps(workload, attn, checkpointing, spec, shallow, depth)
    candidate = CandidatePlan(measure, None, None, None)
    if steps is None:
        return candidate
    try:
        try:
            _predict(candidate, steps, workload, spec, options, spec.margin, layers)
        except Unsound as unsound:
            steps.close()
            depth = depth.fallback()
            steps, measure = candidate_steps(workload, attn, checkpointing, spec, shallow.for_choice(depth), depth, steps.parts)
            candidate = CandidatePlan(measure, None, None, None, depth_fallback=f"{depth.note()} ({unsound})")
            _predict(candidate, steps, workload, spec, options, spec.margin, layers)
    except StepFailed as exc:
        measure.error, candidate.predictions = str(exc), []
    finally:
        steps.close()
    measure.wall_s = round(time.perf_counter() - started, 3)
    return candidate


def plan_workloads(spec: ProbeSpec, capacity: int, depth_mode: str = "auto"):
    """(the model on fake tensors, how its depth is covered, its shallow copies or None)."""
    source = plan_source(spec)
    # Built with sdpa (eager where the model has no sdpa): every candidate switches attention in
    # place (flash-attn may be missing here); one the model does not support reports why.
    built_with = "eager" if attn_unsupported_by_model("sdpa", model_class(source.config)) else "sdpa"
    # Built on meta: where shallow copies run the steps, the whole model only counts parameters,
    # and LoRA adapters alike in every layer are left out of it (peft on the whole model was
    # 0.5 s of a 7B plan, 2-3 s of a 70B): its counts are the copies', extended.
    built = spec.replace(attn_implementation=built_with)
    reason = "--full-depth" if depth_mode != "auto" else full_depth_reason(spec) or _lora_depth_reason(spec)
    workload = _build(source, built, FakeDevice(capacity), fake=False, adapters=reason is not None)
    depth = choose_depth(source.config, workload.model) if reason is None else DepthChoice(reason=reason)
    shallow = None
    if not depth.extended:
        if workload.adapters_left_out:
            workload = _build(source, built, FakeDevice(capacity), fake=False)
        to_fake(workload)
    else:
        def copy(choice: DepthChoice, kept: list[list[int]]):
            made = _build(ModelSource(source.kind, source.path, shallow_config(source.config, choice, kept)), built,
                          FakeDevice(capacity))
            made.spec = spec
            return made

        shallow = ShallowCopies(copy, depth)
        if workload.adapters_left_out:
            workload.total_params, workload.trainable_params = (
                round(depth.extend(*(getattr(w, name) for w in shallow))) for name in ("total_params", "trainable_params"))
    workload.spec = spec
    return workload, depth, shallow


def _lora_depth_reason(spec: ProbeSpec) -> str | None:
    """A regex or a dotted path can adapt some layers and not others: a line through shallow
    copies would not reach the full depth's count."""
    if spec.train_type == "full" or alike_in_every_layer(spec.lora_target_modules, spec.lora_target_regex):
        return None
    return "the LoRA targets are a regex or a dotted module path, which could pick some layers only"


def _build(source, spec: ProbeSpec, device: FakeDevice, fake: bool = True, adapters: bool = True):
    try:
        workload = build_plan_workload(source, spec, device, fake, adapters)
    except AutotuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - say what failed, never a traceback
        raise AutotuneError(f"cannot build {source.architecture} on the meta device and fake tensors: {short_message(exc)}",
                            "probe it on a real card instead") from exc
    workload.spec = spec
    return workload


def load_libraries(source: ModelSource, spec: ProbeSpec) -> None:
    """Import what every plan runs, before it runs: the model's modeling code, peft for LoRA,
    accelerate's mixed-precision wrapper, the Trainer (its optimizer choice). transformers and
    peft load these lazily, so otherwise the first step pays for them; the plan reports the time
    apart (`import_s`), as importing torch and transformers is no part of planning."""
    import accelerate.utils  # noqa: F401
    import transformers.trainer  # noqa: F401

    if spec.train_type in ("lora", "qlora"):
        import peft  # noqa: F401
    model_class(source.config)  # the auto mapping imports the modeling module


def make_plan(spec: ProbeSpec, options: PlanOptions, progress: ProgressSink | None = None) -> Plan:
    progress = progress or ProgressSink()
    started, cpu_started = time.perf_counter(), time.process_time()
    source = plan_source(spec)
    progress.stage("importing the model's code, peft, accelerate and the Trainer")
    load_libraries(source, spec)
    import_s, import_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    with _libraries_frozen():
        return _plan_after_imports(spec, options, progress, source, started, cpu_started, import_s, import_cpu_s)


@contextlib.contextmanager
def _libraries_frozen():
    """Python's cyclic collector, left alone, walks every object the imports made (torch,
    transformers, peft: millions) each time it collects its oldest generation, a few dozen times
    a plan: 0.3 s of a 7B LoRA plan's 4-5. Frozen, they are not walked; what the plan makes is
    collected as before. Unfrozen when the plan ends (a probe plans first, then trains)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _plan_after_imports(spec, options, progress, source, started, cpu_started, import_s, import_cpu_s) -> Plan:
    progress.stage(f"building {source.architecture} from {source.path} on fake tensors (no memory is allocated)")
    workload, depth, shallow = plan_workloads(spec, max(options.targets), options.depth)
    progress.stage(depth.note())
    if spec.rlhf is not None and spec.rlhf.colocated:
        from ..trials.rlhf_rollout import size_rollout

        size_rollout(workload)  # the engine's need from the config, as vLLM accounts it (model/rollout.py)
    cls = model_class(source.config)
    layers = layer_bytes(shallow[0].model if shallow else workload.model)  # the same largest layer and the rest in every copy
    candidates = []
    for attn in options.attn:
        for checkpointing in options.checkpointing:
            unsupported = attn_unsupported_by_model(attn, cls)
            if unsupported:  # skipped with the reason, as the probe skips it
                candidate = CandidatePlan(CandidateMeasure(attn, checkpointing, attn, error=unsupported), None, None, None)
                candidates.append(candidate)
                continue
            progress.stage(f"searching the train and eval frontiers with fake-tensor steps: attn {attn}, "
                           f"checkpointing {'on' if checkpointing else 'off'}")
            candidates.append(plan_candidate(workload, attn, checkpointing, spec, options, layers, shallow, depth))
    if not any(c.measure.error is None for c in candidates):
        raise AutotuneError(f"no candidate could run under fake tensors: {candidates[0].measure.error}",
                            "rerun with AUTOTUNE_DEBUG=1, or probe on a real card")
    choice = {capacity: choose(candidates, i, spec.eval) for i, capacity in enumerate(options.targets)}
    return Plan(spec, describe_model(workload), options, spec.margin, candidates, choice,
                wall_s=round(time.perf_counter() - started, 3), import_s=round(import_s, 3),
                cpu_s=round(time.process_time() - cpu_started, 3), import_cpu_s=round(import_cpu_s, 3),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, workload=workload,
                model_sizes=config_sizes(source.config),
                depth="; ".join([depth.note(), *(f"{c.measure.key} fell back: {c.depth_fallback}" for c in candidates
                                                 if c.depth_fallback)]))
