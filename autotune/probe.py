"""The probe: spec -> workload -> trials chosen by the search -> recipe. Returns data; the CLI
prints. `progress` receives events (see ProgressSink) so a caller can show them."""

from __future__ import annotations

import datetime
import time

from . import __version__
from .errors import AutotuneError, DoesNotFitError
from .global_batch import split_global_batch
from .dataset import from_dataset
from .model_source import check_max_length, resolve
from .multimodal import recipe_record, recipe_settings
from .training_setup import plan_inputs
from .quantize import quantization_record
from .recipe import SCHEMA, Hardware, ModelInfo, Recipe, SearchRecord, Settings, TrialResult, Validation
from .search import FrontierSearch
from .sizes import format_size
from .spec import ProbeSpec


class ProgressSink:
    """Receives progress events; the default ignores them."""

    def stage(self, text: str) -> None: ...

    def trial_started(self, phase: str, settings: dict) -> None: ...

    def trial_finished(self, result: TrialResult) -> None: ...

    def dataset(self, profile, record: dict) -> None:
        """--dataset was measured: `record` is what the recipe keeps (distribution, limits, problem lines)."""


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
    if spec.train_type in ("lora", "qlora"):
        lora = {"r": spec.lora_r, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout, "target_modules": spec.lora_target_modules}
    return ModelInfo(source=source.kind, path=source.path, model_type=source.model_type, architecture=source.architecture,
                     dtype=spec.dtype, train_type=spec.train_type, num_parameters=workload.total_params,
                     trainable_parameters=workload.trainable_params, max_length=spec.max_length, lora=lora,
                     quantization=quantization_record(spec.dtype) if spec.train_type == "qlora" else None)


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


def probe(spec: ProbeSpec, progress: ProgressSink | None = None, device=None, plan: Recipe | None = None) -> Recipe:
    """`plan`: a recipe from `autotune plan`; the search starts at its predicted frontier."""
    progress = progress or ProgressSink()
    started = time.perf_counter()
    source = resolve(spec.model, spec.model_config)
    data = None
    if spec.dataset:
        spec, profile, data = from_dataset(spec, source)
        progress.dataset(profile, data)
    check_max_length(source.config, spec.max_length)
    from .cluster.session import open_session

    session = open_session(spec, source, progress, device)  # in this process, or in supervised workers
    try:
        recipe = _probe(spec, source, session, progress, started, plan, data)
        session.confirm_agreement(recipe)
        resumed = getattr(session.runner, "resumed", 0)
        if resumed:
            progress.stage(f"{resumed} trial(s) taken from the journal {spec.journal}")
        if session.agreed:
            progress.stage(f"all {session.world_size} ranks reached the same recipe")
        return recipe
    finally:
        session.close()


def _probe(spec: ProbeSpec, source, session, progress: ProgressSink, started: float, plan: Recipe | None,
           data: dict | None) -> Recipe:
    from .cluster.dimensions import search_train

    runner, budget = session.runner, session.budget
    base = {"gradient_checkpointing": spec.gradient_checkpointing, "attn_implementation": spec.attn_implementation}
    if spec.env:
        base["env"] = dict(spec.env)
    trials: list[TrialResult] = []
    hint = None
    if plan is not None:
        from .plan import hint_from_plan

        hint = hint_from_plan(plan, spec, budget)
        progress.stage(f"starting from the plan's predicted frontier: batch {hint}" if hint else "the plan has no line for this candidate")
    base, search = search_train(runner, base, budget, spec.max_batch_size, progress, trials, spec.strategies,
                                spec.expandable_segments if session.supervisor else "off", session.hardware.device, hint=hint)
    if search.error:
        failed = trials[-1]
        raise AutotuneError(f"a training step failed for a reason other than memory: {failed.message}",
                            "rerun with AUTOTUNE_DEBUG=1 for details")
    if search.frontier == 0:
        first = trials[0]
        seen = f"peak {format_size(first.peak_bytes)}" if first.peak_bytes else first.outcome
        raise DoesNotFitError(f"even batch size 1 does not fit at max length {spec.max_length} ({seen}, usable budget {format_size(budget)})",
                              "try --train-type lora, --gradient-checkpointing, a shorter --max-length, or a larger card")

    split = split_global_batch(spec.global_batch_size, search.frontier, session.world_size)
    chosen = next((t for t in trials if t.fits and t.batch_size == split.per_device), None)
    if chosen is None:  # a smaller batch than the frontier: measure it rather than assume it fits
        chosen = runner.run("train", {**base, "per_device_train_batch_size": split.per_device})
        trials.append(chosen)
        progress.trial_finished(chosen)

    checkpointing = chosen.settings.get("gradient_checkpointing", spec.gradient_checkpointing)
    setup = plan_inputs(source, spec)  # the vision-language setup, from the config alone
    vision = recipe_settings(setup, spec, checkpointing)
    settings = Settings(
        per_device_train_batch_size=split.per_device,
        gradient_accumulation_steps=split.accumulation,
        gradient_checkpointing=checkpointing,
        attn_implementation=chosen.settings.get("attn_implementation", spec.attn_implementation),
        torch_dtype=spec.dtype,
        max_length=spec.max_length,
        optim=spec.optim,
        strategy=base.get("strategy"),
        **{k: v for k, v in vision.items() if k != "env"},
        env={**vision.get("env", {}), **(base.get("env") or {})},
    )
    validation = _validation_from_trial(chosen, budget)
    record = SearchRecord(
        margin=spec.margin, capacity_bytes=session.capacity, budget_bytes=budget, max_batch_size=spec.max_batch_size,
        steps_per_trial=spec.steps, frontier={"train": search.frontier}, global_batch_size=spec.global_batch_size,
        effective_global_batch_size=split.effective, global_batch_exact=split.exact, global_batch_note=split.note,
        trials=trials, wall_s=round(time.perf_counter() - started, 3),
    )
    return Recipe(
        schema=SCHEMA, model=session.model, hardware=session.hardware,
        settings=settings, search=record, validation=validation,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), autotune_version=__version__,
        multimodal=recipe_record(setup, spec), dataset=data,
    )


def _validation_from_trial(trial: TrialResult, budget: int) -> Validation:
    peak = trial.peak_bytes or 0
    return Validation(
        passed=trial.fits, method="search-trial", steps=trial.steps, peak_bytes=trial.peak_bytes,
        headroom_bytes=budget - peak, headroom_pct=round(100.0 * (budget - peak) / budget, 2),
        tokens_per_s=trial.tokens_per_s,
        message="the chosen configuration ran in the search; a dedicated validation run is issue #3",
    )
