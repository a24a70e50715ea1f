"""The probe: spec -> workload -> trials chosen by the search -> recipe. Returns data; the CLI
prints. `progress` receives events (see ProgressSink) so a caller can show them."""

from __future__ import annotations

import datetime
import time

from . import __version__
from .devices import make_device
from .errors import AutotuneError, DoesNotFitError, UsageError
from .model_source import check_max_length, resolve
from .recipe import SCHEMA, Hardware, ModelInfo, Recipe, SearchRecord, Settings, TrialResult
from .search import FrontierSearch
from .sizes import format_size
from .space import SearchSpace, attn_unavailable_reason
from .spec import ProbeSpec
from .trial import InProcessRunner
from .validate import validate
from .workload import load_workload


class ProgressSink:
    """Receives progress events; the default ignores them."""

    def stage(self, text: str) -> None: ...

    def trial_started(self, phase: str, settings: dict) -> None: ...

    def trial_finished(self, result: TrialResult) -> None: ...


def library_versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__), "peft": str(peft.__version__)}


def describe_hardware(device, world_size: int) -> Hardware:
    return Hardware(device=device.kind, name=device.name, capacity_bytes=device.capacity,
                    device_count=device.count, world_size=world_size, **library_versions())


def describe_model(workload) -> ModelInfo:
    spec, source = workload.spec, workload.source
    lora = None
    if spec.train_type == "lora":
        lora = {"r": spec.lora_r, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout, "target_modules": spec.lora_target_modules}
    return ModelInfo(source=source.kind, path=source.path, model_type=source.model_type, architecture=source.architecture,
                     dtype=spec.dtype, train_type=spec.train_type, num_parameters=workload.total_params,
                     trainable_parameters=workload.trainable_params, max_length=spec.max_length, lora=lora)


def find_frontier(runner, phase: str, base_settings: dict, budget: int, max_batch: int, progress: ProgressSink,
                  trials: list[TrialResult], hint: int | None = None) -> FrontierSearch:
    """Search the batch size of `phase` ("train" or "eval") with the other settings fixed."""
    key = "per_device_train_batch_size" if phase == "train" else "per_device_eval_batch_size"
    search = FrontierSearch(budget=budget, max_batch=max_batch, hint=hint)
    while (batch := search.next_batch()) is not None:
        settings = {**base_settings, key: batch}
        progress.trial_started(phase, settings)
        result = runner.run(phase, settings)
        trials.append(result)
        progress.trial_finished(result)
        search.record(batch, result.outcome, result.peak_bytes)
    return search


def probe(spec: ProbeSpec, progress: ProgressSink | None = None, device=None) -> Recipe:
    """Search the space (attention x checkpointing, train and eval batch), validate the fastest
    configuration, and return the recipe. See space.py and validate.py."""
    progress = progress or ProgressSink()
    started = time.perf_counter()
    source = resolve(spec.model, spec.model_config)
    check_max_length(source.config, spec.max_length + (spec.max_new_tokens or 0))
    device = device or make_device(spec.device, spec.gpu_memory)
    runnable = [a for a in spec.attn_candidates if attn_unavailable_reason(a, device, spec.dtype) is None]
    if not runnable:
        reasons = "; ".join(f"{a}: {attn_unavailable_reason(a, device, spec.dtype)}" for a in spec.attn_candidates)
        raise UsageError("--attn", f"no attention implementation can run here ({reasons})", "add sdpa or eager to --attn")
    progress.stage(f"loading {source.architecture} ({source.kind}: {source.path}) on {device.name}")
    workload = load_workload(source, spec.replace(attn_implementation=runnable[0], gradient_checkpointing=False), device)
    budget = int(device.capacity * spec.usable_fraction)
    progress.stage(f"usable budget {format_size(budget)} of {format_size(device.capacity)} (margin {spec.margin:.0%})")

    space = SearchSpace(spec, InProcessRunner(workload, spec.steps, budget), device, budget, progress, find_frontier)
    space.search_train()
    space.runoff()
    ranked = space.ranked()
    if not ranked:
        if space.errors:
            raise AutotuneError(space.errors[0], "rerun with AUTOTUNE_DEBUG=1 for details")
        raise DoesNotFitError(f"even batch size 1 does not fit at max length {spec.max_length} (usable budget {format_size(budget)})",
                              "try --train-type lora, --gradient-checkpointing on, a shorter --max-length, or a larger card")
    if spec.eval:
        space.eval_frontier(ranked[0].attn_implementation, ranked[0].gradient_checkpointing)
    done = validate(space, ranked)
    chosen = done.config
    for cand in space.candidates:
        cand.chosen = (cand.attn_implementation, cand.gradient_checkpointing) == (chosen.attn_implementation, chosen.gradient_checkpointing)
    return _recipe(spec, workload, device, space, done, budget, started)


def _recipe(spec, workload, device, space, done, budget: int, started: float) -> Recipe:
    chosen = done.config
    cand = next(c for c in space.candidates if c.chosen)
    frontier = {"train": cand.frontier}
    if spec.eval:
        frontier["eval"] = space.eval_frontiers.get(chosen.attn_implementation)
    loss_only = spec.prediction_loss_only if spec.eval else None
    settings = Settings(
        per_device_train_batch_size=chosen.per_device_train_batch_size,
        gradient_accumulation_steps=chosen.gradient_accumulation_steps,
        per_device_eval_batch_size=done.eval_batch,
        eval_accumulation_steps=spec.eval_steps if (spec.eval and not spec.prediction_loss_only) else None,
        prediction_loss_only=loss_only,
        gradient_checkpointing=chosen.gradient_checkpointing,
        attn_implementation=chosen.attn_implementation,
        torch_dtype=spec.dtype,
        max_length=spec.max_length,
    )
    target = spec.global_batch_size
    record = SearchRecord(
        margin=spec.margin, capacity_bytes=device.capacity, budget_bytes=budget, max_batch_size=spec.max_batch_size,
        steps_per_trial=spec.steps, frontier=frontier, global_batch_size=target,
        effective_global_batch_size=chosen.per_device_train_batch_size * chosen.gradient_accumulation_steps * spec.world_size,
        global_batch_exact=chosen.exact, global_batch_note=chosen.note,
        trials=space.trials, wall_s=round(time.perf_counter() - started, 3),
        candidates=[c.row() for c in space.candidates], phases=space.phases,
    )
    return Recipe(
        schema=SCHEMA, model=describe_model(workload), hardware=describe_hardware(device, spec.world_size),
        settings=settings, search=record, validation=done.validation,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), autotune_version=__version__,
    )
