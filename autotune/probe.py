"""The probe: spec -> workload -> trials chosen by the search -> recipe. Returns data; the CLI
prints. `progress` receives events (see ProgressSink) so a caller can show them."""

from __future__ import annotations

import dataclasses
import datetime
import time

from . import __version__
from .recipe import levers
from .cluster.worker import trainer_applies
from .errors import AutotuneError, DoesNotFitError, UsageError
from .model.dataset import from_dataset
from .model.lora_match import check_before_load
from .model.source import check_max_length, model_class, require_weights, resolve
from .model.multimodal import recipe_record, recipe_settings
from .progress import ProgressSink  # noqa: F401  (re-exported: autotune.probe.ProgressSink)
from .recipe.training_args import mixed_precision
from .model.training_setup import plan_inputs
from .recipe.schema import SCHEMA, Recipe, SearchRecord, Settings, TrialResult
from .search.global_batch import split_advice
from .search.frontier import find_frontier
from .sizes import format_size
from .search.attention import attn_unavailable_reason, attn_unsupported_by_model
from .search.space import SearchSpace
from .spec import ProbeSpec
from .search.validate import validate


def probe(spec: ProbeSpec, progress: ProgressSink | None = None, device=None, plan: Recipe | None = None) -> Recipe:
    """Search the space (attention x checkpointing, train and eval batch; strategies when several
    are given), validate the fastest configuration, and return the recipe. Trials run in this
    process or in supervised workers (cluster/session.py). `plan`: a recipe from `autotune plan`;
    the search starts at its predicted frontier."""
    progress = progress or ProgressSink()
    started = time.perf_counter()
    source = resolve(spec.model, spec.model_config)
    require_weights(source)
    if spec.train_type != "full":
        check_before_load(source.config, spec.lora_target_modules, spec.lora_target_regex)
    data = None
    if spec.dataset:
        spec, profile, data = from_dataset(spec, source)
        progress.dataset(profile, data)
    values = None
    if spec.frontier:  # issue #14: a limit is searched instead of the batch; load at its largest value
        from .search.limits import frontier_values

        values = frontier_values(spec, source)
        spec = values.loading_spec(spec)
    if spec.rlhf is not None:
        _check_rlhf_model(spec, source)
    check_max_length(source.config, spec.max_length, spec.max_new_tokens or 0)
    if plan is not None:
        from .plan.match import check_plan

        check_plan(plan, spec, source)  # a plan for another model, training or sharding: refused before the model loads
    runnable = _runnable_attention(spec, device, model_class(source.config))
    from .cluster.session import open_session
    from .plan.hints import FirstPlan

    # The plan first (without --from-plan) runs as soon as the card is known: beside the load in a worker.
    first_plan = FirstPlan(spec, lambda kind, world_size: plan is None and _plans_first(spec, kind, world_size, source), progress)
    # Load with an attention that runs here; each trial then switches in place.
    session = open_session(spec.replace(attn_implementation=runnable[0], gradient_checkpointing=False), source, progress, device,
                           on_device=first_plan)
    try:
        recipe = _probe(spec, source, session, progress, started, plan, data, values, first_plan)
        session.confirm_agreement(recipe)
        resumed = getattr(session.runner, "resumed", 0)
        if resumed:
            progress.stage(f"{resumed} trial(s) taken from the journal {spec.journal}")
        if session.agreed:
            progress.stage(f"all {session.world_size} ranks reached the same recipe")
        return recipe
    finally:
        session.close()


def _check_rlhf_model(spec: ProbeSpec, source) -> None:
    """What an RLHF probe cannot run yet, refused before the model loads (the plan takes them)."""
    from .trials.rlhf_run import check_vision

    check_vision(plan_inputs(source, spec), spec)
    if spec.rlhf.rlhf_type != "grpo" or spec.max_length is None:
        return
    from .model.source import position_limit

    limit, total = position_limit(source.config), spec.max_length + spec.rlhf.completion_length
    if limit is not None and total > limit:  # the prompt and its completion are one sequence
        raise UsageError("--max-completion-length", f"prompt {spec.max_length} + completion {spec.rlhf.completion_length} = {total} "
                         f"tokens, past the model's position limit of {limit}", "shorten the prompt (--max-length) or the completion")


def _runnable_attention(spec: ProbeSpec, device, model_cls=None) -> list[str]:
    if device is None:
        from .devices import default_device_kind

        device = _DeviceView(spec.device or default_device_kind())
    runnable = [a for a in spec.attn_candidates if attn_unavailable_reason(a, device, spec.dtype, model_cls) is None]
    if not runnable:
        reasons = "; ".join(f"{a}: {attn_unavailable_reason(a, device, spec.dtype, model_cls)}" for a in spec.attn_candidates)
        raise UsageError("--attn", f"no attention implementation can run here ({reasons})", "add sdpa or eager to --attn")
    return runnable


class _DeviceView:
    """What attention checks need to know of a device, without opening it (workers own it)."""

    def __init__(self, kind: str):
        import torch

        self.kind = kind
        self.torch_device = torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")


class _WithBase:
    """A runner that adds the chosen strategy and environment to every trial's settings."""

    def __init__(self, inner, base: dict):
        self.inner, self.base = inner, base

    @property
    def workload(self):
        return getattr(self.inner, "workload", None)

    def run(self, phase: str, settings: dict, steps: int | None = None) -> TrialResult:
        return self.inner.run(phase, {**self.base, **settings}, steps)


def _probe(spec: ProbeSpec, source, session, progress: ProgressSink, started: float, plan: Recipe | None,
           data: dict | None, values=None, first_plan=None) -> Recipe:
    runner, budget = session.runner, session.budget
    if spec.rlhf is not None and getattr(runner, "workload", None) is not None:
        from .trials.rlhf_run import prepare

        prepare(runner.workload)  # the rollout engine's share (auto, or a share vLLM would refuse) before any trial
    base = {"env": dict(spec.env)} if spec.env else {}
    hint, hints = None, {}
    if plan is not None:
        from .plan.hints import hint_from_plan, hints_from_plan

        hint, hints = hint_from_plan(plan, spec, budget), hints_from_plan(plan, spec, budget, progress)
        progress.stage(f"starting from the plan's predicted frontier: batch {hint}" if hint else "the plan has no line for this candidate")
    elif first_plan is not None and first_plan.hints is not None:  # planned when the session knew its card
        hints = first_plan.hints
        hint = hints.get((_first_attention(spec, model_class(source.config)), False), {}).get("train")
    trials: list[TrialResult] = []
    choose_allocator = spec.expandable_segments == "auto" and session.supervisor is not None and session.hardware.device == "cuda"
    if values is None and (len(spec.strategies) > 1 or choose_allocator):
        # Strategy and allocator first (issue #6), at the first runnable attention without checkpointing.
        from .search.dimensions import search_train

        first = {**base, "attn_implementation": _first_attention(spec, model_class(source.config)), "gradient_checkpointing": False}
        chosen, _ = search_train(runner, first, budget, spec.max_batch_size, progress, trials, spec.strategies,
                                 spec.expandable_segments, session.hardware.device, hint=hint)
        base = {k: chosen[k] for k in ("strategy", "env") if chosen.get(k)}
    elif spec.strategies:
        base["strategy"] = spec.strategies[0]

    device = runner.workload.device if getattr(runner, "workload", None) is not None else None
    space = SearchSpace(spec, _WithBase(runner, base), device or _DeviceView(session.hardware.device), budget,
                        progress, find_frontier)
    space.trials[:0] = trials
    space.first_hint, space.plan_hints = hint, hints
    planned = first_plan.phase(session.load_span) if first_plan is not None else None
    if planned:
        space.phases["plan"] = planned
    space.model_cls = model_class(source.config)
    space.lever_facts, space.through_trainer = session.lever_facts, trainer_applies(base.get("strategy"), spec)
    if spec.task == "eval":  # issue #14: evaluation alone
        from .search.eval_only import search_eval

        done, limit, frontier = search_eval(space, find_frontier, values, lambda found: _at_limit(space, found, progress))
        return _recipe(space.spec, source, session, space, done, base, started, data, limit, frontier)
    limit = None
    if values is not None:
        from .search.limits import search_limit

        limit = search_limit(space, values)
        spec = _at_limit(space, limit, progress)
    else:
        space.search_train()
        space.runoff()
    ranked = space.ranked()
    if not ranked:
        if space.errors:
            raise AutotuneError(space.errors[0], "rerun with AUTOTUNE_DEBUG=1 for details")
        raise DoesNotFitError(f"even batch size 1 does not fit at max length {spec.max_length} (usable budget {format_size(budget)})",
                              "try --train-type lora, --gradient-checkpointing on, a shorter --max-length, or a larger card")
    if spec.eval:
        space.eval_frontier(ranked[0])
    try:
        done = validate(space, ranked)
    except DoesNotFitError:
        lower = _evaluation_limit(space, limit, ranked[0], progress) if (limit is not None and spec.eval) else None
        if lower is None:
            raise
        limit, spec, ranked = lower, _at_limit(space, lower, progress), space.ranked()
        space.eval_frontier(ranked[0])
        done = validate(space, ranked)
    chosen = done.config
    for cand in space.candidates:
        cand.chosen = ((cand.attn_implementation, cand.gradient_checkpointing, cand.levers)
                       == (chosen.attn_implementation, chosen.gradient_checkpointing, chosen.levers))
    return _recipe(spec, source, session, space, done, base, started, data, limit)


def _evaluation_limit(space, limit, config, progress):
    """The run failed at the found limit in its evaluation: the longest value whose evaluation fits."""
    from .search.limits import evaluation_limit

    progress.stage(f"the run does not fit at {limit.dimension} {limit.value} with its evaluation: searching the "
                   "longest value whose evaluation fits")
    return evaluation_limit(space, limit, config)


def _at_limit(space, limit, progress) -> ProbeSpec:
    """From here on every trial (eval frontier, validation) runs at the limit's found value."""
    progress.stage(f"{limit.dimension} frontier {limit.value} at batch {limit.batch} ({limit.trials} trials)")
    space.spec = space.spec.replace(**{limit.dimension: limit.value})
    space.runner = _WithBase(space.runner.inner, {**space.runner.base, limit.dimension: limit.value})
    return space.spec


def _plans_first(spec: ProbeSpec, device_kind: str, world_size: int, source) -> bool:
    """Plan first (--plan-first; by default on a CUDA card, where a trial costs far more than a
    fake-tensor step on the CPU), one device, no sharding strategy: the plan is exact there. Not
    by default for vision-language models, whose towers still make a plan take minutes."""
    if spec.plan_first == "off" or spec.strategies or world_size > 1 or spec.train_type == "qlora":
        return False
    if spec.plan_first == "on":
        return True
    return device_kind == "cuda" and plan_inputs(source, spec).family is None


def _first_attention(spec: ProbeSpec, model_cls=None) -> str:
    usable = [a for a in spec.attn_candidates if attn_unsupported_by_model(a, model_cls) is None] or list(spec.attn_candidates)
    return next((a for a in usable if a != "flash_attention_2"), usable[0])


def _recipe(spec, source, session, space, done, base: dict, started: float, data: dict | None, limit=None,
            frontier: dict | None = None) -> Recipe:
    chosen = done.config
    cand = next(c for c in space.candidates if c.chosen)
    if frontier is None:
        frontier = {"train": cand.frontier} if limit is None else {limit.dimension: limit.value}
        if spec.eval:
            frontier["eval"] = space.eval_frontiers.get(space.eval_key(chosen))
    setup = plan_inputs(source, spec)  # the vision-language setup, from the config alone
    vision = recipe_settings(setup, spec, chosen.gradient_checkpointing)
    settings = Settings(
        per_device_train_batch_size=chosen.per_device_train_batch_size,
        gradient_accumulation_steps=chosen.gradient_accumulation_steps,
        per_device_eval_batch_size=done.eval_batch,
        eval_accumulation_steps=spec.eval_steps if (spec.eval and spec.eval_keeps != "loss") else None,
        prediction_loss_only=(spec.eval_keeps == "loss") if spec.eval else None,
        eval_outputs=spec.eval_keeps if spec.eval else None,
        max_new_tokens=spec.max_new_tokens if (spec.eval and spec.eval_keeps == "generate") else None,
        use_cache_off_in_sub_configs=spec.use_cache_off_in_sub_configs,
        gradient_checkpointing=chosen.gradient_checkpointing,
        attn_implementation=chosen.attn_implementation,
        torch_dtype=spec.dtype,
        mixed_precision=mixed_precision(spec.dtype),
        max_length=spec.max_length,
        optim=spec.optim,
        task=spec.task if spec.task != "train" else None,
        strategy=base.get("strategy"),
        **levers.recipe_settings(spec, chosen, space.device),
        **{k: v for k, v in vision.items() if k != "env"},
        env={**vision.get("env", {}), **(base.get("env") or {})},
        **(_rlhf_settings(spec, session) if spec.rlhf else {}),
    )
    record = SearchRecord(
        margin=spec.margin, capacity_bytes=session.capacity, budget_bytes=session.budget, max_batch_size=spec.max_batch_size,
        steps_per_trial=spec.steps, frontier=frontier, global_batch_size=spec.global_batch_size,
        effective_global_batch_size=chosen.per_device_train_batch_size * chosen.gradient_accumulation_steps * session.world_size,
        global_batch_exact=chosen.exact,
        global_batch_note=chosen.note or split_advice(spec.global_batch_size, _advised_frontier(space, cand, frontier), session.world_size),
        sequence=limit.record() if limit else None,
        trials=space.trials, wall_s=round(time.perf_counter() - started, 3),
        candidates=[c.row() for c in space.candidates], phases=space.phases,
        levers=levers.outcome(spec, space.device, chosen, space.candidates),
    )
    return Recipe(
        schema=SCHEMA, model=dataclasses.replace(session.model, max_length=spec.max_length), hardware=session.hardware,
        settings=settings, search=record, validation=done.validation,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), autotune_version=__version__,
        multimodal=recipe_record(setup, spec), dataset=data,
        rlhf=_rlhf_record(spec, session, chosen) if spec.rlhf else None,
    )


def _advised_frontier(space, cand, frontier: dict) -> int:
    """The train frontier the global batch advice weighs. Where the search stopped at the largest
    batch the global batch admits (with a plan), the plan's frontier, which was measured past it
    under fake tensors: a card that fits more than the global batch needs is worth a note."""
    measured = frontier.get("train", 0) or 0
    planned = space.plan_hints.get((cand.attn_implementation, cand.gradient_checkpointing), {}).get("train")
    return max(measured, planned or 0) if cand.bound and not cand.levers else measured


def _rlhf_settings(spec, session) -> dict:
    from .trials.rlhf_run import recipe_settings

    return recipe_settings(spec, session.rollout_source)


def _rlhf_record(spec, session, chosen) -> dict:
    from .trials.rlhf_run import recipe_record

    return recipe_record(spec, session.rollout_source, chosen.per_device_train_batch_size,
                         chosen.gradient_accumulation_steps, session.world_size, session.capacity)
