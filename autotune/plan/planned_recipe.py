"""A plan turned into a recipe for its single target card, marked planned (`validation.method`
"planned", never validated: emit refuses it unless told otherwise, check refuses it). The planner
(planner.py) makes the `Plan`; this writes it down as the probe writes its recipe."""

from __future__ import annotations

import datetime

from .. import __version__
from ..describe import library_versions
from ..errors import UsageError
from ..model.multimodal import recipe_record, recipe_settings as vision_settings
from ..recipe.schema import SCHEMA, Hardware, Recipe, SearchRecord, Settings, TrialResult, Validation
from ..recipe.training_args import mixed_precision
from ..search.global_batch import split_global_batch
from ..sizes import format_size
from .planner import Plan, Prediction, no_choice_hint, no_choice_reason


def plan_recipe(plan: Plan) -> Recipe:
    """A recipe for the plan's single target card, marked planned: `validation.passed` is false
    and `validation.method` is "planned" (emit refuses it unless told otherwise)."""
    if len(plan.options.targets) != 1:
        raise UsageError("--out", "a plan recipe is for one card", "give a single --gpu-memory with --out")
    capacity = plan.options.targets[0]
    key = plan.choice[capacity]
    if key is None:
        raise UsageError("--out", f"nothing fits a {format_size(capacity)} card in this plan ({no_choice_reason(plan, 0)}), "
                         "so there is no recipe to write", no_choice_hint(plan, 0))
    chosen = next(c for c in plan.candidates if c.measure.key == key)
    p, m, spec = chosen.predictions[0], chosen.measure, plan.spec
    setup = getattr(plan.workload, "setup", None)  # a vision-language model's media limits and freezing, as the probe writes them
    settings = Settings(per_device_train_batch_size=p.per_device_train_batch_size,
                        gradient_accumulation_steps=p.gradient_accumulation_steps,
                        per_device_eval_batch_size=p.eval_frontier or None, prediction_loss_only=spec.eval_keeps == "loss",
                        eval_outputs=spec.eval_keeps, eval_accumulation_steps=spec.eval_keep_settings().get("eval_accumulation_steps"),
                        use_cache_off_in_sub_configs=spec.use_cache_off_in_sub_configs,
                        gradient_checkpointing=m.gradient_checkpointing, attn_implementation=m.attn_implementation,
                        torch_dtype=spec.dtype, mixed_precision=mixed_precision(spec.dtype), max_length=spec.max_length,
                        strategy=plan.options.strategy, **(_rlhf_settings(plan) if spec.rlhf else {}),
                        **vision_settings(setup, spec, m.gradient_checkpointing))
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
    # The run at the recipe's own settings (the train step at its batch, the evaluation at its eval
    # batch), not at the frontiers: a smaller global batch runs far below the train frontier's peak.
    validation = Validation(passed=False, method="planned", peak_bytes=p.run_peak_bytes,
                            headroom_bytes=p.budget_bytes - p.run_peak_bytes, eval_peak_bytes=p.eval_peak_bytes if p.eval_frontier else None,
                            message="planned under fake tensors, never run on a GPU: probe it (probe --from-plan) before use")
    return Recipe(schema=SCHEMA, model=plan.model, hardware=hardware, settings=settings, search=search,
                  validation=validation, plan=plan.to_dict(), multimodal=recipe_record(setup, spec), rlhf=_rlhf_record(plan, p) if spec.rlhf else None,
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  autotune_version=__version__)


def _rlhf_settings(plan: Plan) -> dict:
    from ..trials.rlhf_run import recipe_settings

    return recipe_settings(plan.spec, plan.workload)


def _rlhf_record(plan: Plan, p: Prediction) -> dict:
    """The probe's `rlhf` record (trials/rlhf_run.py recipe_record), the rollout engine as planned."""
    from ..trials.rlhf_run import recipe_record

    record = recipe_record(plan.spec, plan.workload, p.per_device_train_batch_size, p.gradient_accumulation_steps,
                           plan.spec.world_size, p.capacity_bytes)
    rollout = record.get("rollout")
    if rollout and p.rollout:
        rollout["how"] = p.rollout["how"]
        rollout["training_bytes"] = p.rollout["training_bytes"]
    if "cycles" in record:
        record["cycles"] = "planned: each fake-tensor step is an optimizer step that generates (trials/rlhf_step_model.py)"
    return record
