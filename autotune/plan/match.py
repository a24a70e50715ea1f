"""Whether a plan (`autotune plan --out`) was made for what a probe runs (`probe --from-plan`):
the same model, by its architecture and sizes, the same training, and the same ranks and
sharding. A plan's frontiers for anything else start the probe's searches in the wrong place
(a plan for another model opened with an OOM), so a mismatch is refused before the model loads."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe import lora as lora_targets
from ..recipe.schema import Recipe
from ..spec import ProbeSpec

# What decides a model's memory, as its config names it (a vision tower's among them); the
# config's attribute_map answers the same names for GPT-2's n_embd, n_layer, n_head.
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
             "vocab_size", "num_experts", "num_local_experts", "moe_intermediate_size", "num_experts_per_tok", "depth",
             "embed_dim", "num_heads", "out_hidden_size", "patch_size", "image_size", "spatial_merge_size")


def config_sizes(config) -> dict:
    """The config's sizes, and each sub-config's (text_config, vision_config, ...) under its name."""
    sizes = {}
    for key in SIZE_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            sizes[key] = value
    for name in sorted(getattr(config, "sub_configs", None) or {}):
        sub = getattr(config, name, None)
        inner = config_sizes(sub) if sub is not None and hasattr(sub, "to_dict") else {}
        if inner:
            sizes[name] = inner
    return sizes


def size_differences(planned: dict, probed: dict, where: str = "") -> list[str]:
    """Sizes both record and that differ (a size only one side's transformers names is not one)."""
    found = []
    for key in planned.keys() & probed.keys():
        a, b = planned[key], probed[key]
        if isinstance(a, dict) and isinstance(b, dict):
            found += size_differences(a, b, f"{where}{key}.")
        elif a != b:
            found.append(f"{where}{key} {a} vs {b}")
    return sorted(found)


def check_plan(recipe: Recipe, spec: ProbeSpec, source) -> None:
    """UsageError where the plan was not made for this probe's model, training, ranks or sharding."""
    plan = recipe.plan
    if not plan:
        raise UsageError("--from-plan", "this recipe holds no plan", "write one with `python -m autotune plan ... --out PLAN`")
    _check_model(recipe, source)
    _check_training(recipe, spec)
    _check_media(recipe, spec, source)
    _check_ranks(plan, spec)


def _check_model(recipe: Recipe, source) -> None:
    model, recorded = recipe.model, recipe.plan.get("model_sizes")
    planned = f"{model.architecture} ({model.path})"
    probed = f"{source.architecture} ({source.path})"
    if (model.model_type, model.architecture) != (source.model_type, source.architecture):
        differs = ["another architecture"]
    elif recorded is not None:
        differs = size_differences(recorded, config_sizes(source.config))
    else:  # a plan written before its sizes were recorded: the size the recipe keeps
        hidden = _hidden_size(source.config)
        differs = [f"hidden_size {model.hidden_size} vs {hidden}"] if None not in (model.hidden_size, hidden) and model.hidden_size != hidden else []
    if differs:
        raise UsageError("--from-plan", f"the plan was made for {planned}, this probe loads {probed}: {', '.join(differs[:3])}",
                         "probe the model the plan was made for, or plan this one: `python -m autotune plan ... --out PLAN`")


def _hidden_size(config):
    from ..emit.deepspeed import hidden_size

    return hidden_size(config)


def _check_training(recipe: Recipe, spec: ProbeSpec) -> None:
    model = recipe.model
    checks = [("--max-length", model.max_length, spec.max_length), ("--train-type", model.train_type, spec.train_type),
              ("--dtype", model.dtype, spec.dtype)]
    if model.lora and spec.train_type in ("lora", "qlora"):
        names, regex = lora_targets.from_record(model.lora)
        checks += [("--lora-r", model.lora.get("r"), spec.lora_r),
                   ("--lora-target-modules", ",".join(names), ",".join(spec.lora_target_modules)),
                   ("--lora-target-regex", regex or "(none)", spec.lora_target_regex or "(none)")]
    for name, planned, probed in checks:
        if planned != probed:
            raise UsageError("--from-plan", f"the plan was made for {name} {planned}, this probe uses {probed}",
                             f"probe with {name} {planned}, or plan again")


# The worst-case sample's media as the plan and the probe size them (multimodal.recipe_record),
# and the freezing that decides which tower trains.
MEDIA_KEYS = ("images_per_sample", "image_tokens", "videos_per_sample", "video_tokens", "audio_clips_per_sample",
              "audio_tokens", "video_audio_tokens")
FREEZING_KEYS = ("freeze_vit", "freeze_aligner", "freeze_llm")


def _check_media(recipe: Recipe, spec: ProbeSpec, source) -> None:
    """A vision-language plan holds for its media per sample (images, frames, pixels, as tokens)
    and its freezing: more image tokens, or a trained tower, is another run's peak."""
    from ..model.multimodal import recipe_record
    from ..model.training_setup import plan_inputs

    setup = plan_inputs(source, spec)
    probed, planned = recipe_record(setup, spec) or {}, recipe.multimodal or {}
    differs = [f"{key.replace('_', ' ')} {planned.get(key, 0)} vs {probed.get(key, 0)}" for key in MEDIA_KEYS
               if (planned.get(key) or 0) != (probed.get(key) or 0)]
    if differs:
        raise UsageError("--from-plan", f"the plan was made for other media per sample than this probe's: {', '.join(differs[:3])}",
                         "probe with the plan's --max-pixels, --images-per-sample and video flags, or plan again with these")
    if setup.family is None:
        return
    for key in FREEZING_KEYS:
        planned_value, probed_value = getattr(recipe.settings, key, None), getattr(setup.freezing, key)
        if planned_value is not None and planned_value != probed_value:
            flag = "--" + key.replace("_", "-")
            raise UsageError("--from-plan", f"the plan was made for {flag} {str(planned_value).lower()}, this probe uses "
                                            f"{str(probed_value).lower()}", f"probe with {flag} {str(planned_value).lower()}, or plan again")


def _sharding(world_size: int, strategy: str | None) -> str:
    if world_size == 1:
        return "one device"
    return f"{world_size} ranks" + (f" under {strategy}" if strategy else " (DDP)")


def _check_ranks(plan: dict, spec: ProbeSpec) -> None:
    """A plan's peaks are per rank for its world size and strategy; on other ranks, or sharded
    otherwise, they are another run's."""
    world, strategy = plan.get("world_size") or 1, plan.get("strategy")
    strategies = [s for s in spec.strategies if s != "ddp"]  # DDP keeps the whole model on every rank, as a plan without --strategy
    if world == spec.world_size and strategies == ([strategy] if strategy else []):
        return
    if world > 1:
        how = f"probe on {world} ranks (--nproc-per-node {world}" + (f" --strategy {strategy})" if strategy else ")")
    else:
        how = "probe on one device without --strategy"
    if spec.world_size > 1:
        plan_again = f"plan again with --world-size {spec.world_size}" + (f" --strategy {strategies[0]}" if len(strategies) == 1 else "")
    else:
        plan_again = "plan again without --world-size and --strategy"
    raise UsageError("--from-plan", f"the plan's peaks are per rank for {_sharding(world, strategy)}, this probe runs "
                                    f"{_sharding(spec.world_size, ','.join(spec.strategies) or None)}", f"{how}, or {plan_again}")
