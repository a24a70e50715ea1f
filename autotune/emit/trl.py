"""TRL: a `GRPOConfig` / `DPOConfig` JSON for an RLHF recipe (issue #12) that TRL's own parsers
load -- `HfArgumentParser(GRPOConfig).parse_json_file(PATH)`, or `TrlParser` with
`--config PATH` (it reads YAML, and JSON is YAML) -- and a sidecar JSON of what the config
does not own: where the model is, LoRA (the trainer's `peft_config`), the prompt length, and
what the recipe's `rlhf` record says about the reference model and the rollout share.

The TrainingArguments part is `emit hf`'s (the values every probe trial ran with); the rest is
the recipe's RLHF settings under TRL's names. TRL's configs default `gradient_checkpointing`
to on and `bf16` to on where the card has it, so both are always written out."""

from __future__ import annotations

import json

from ..errors import UsageError
from ..recipe.schema import Recipe
from ..recipe.training_args import checkpointing_names
from . import hf, rlhf
from .common import check_strategy, image_resize_note, video_frames_note

CONFIGS = {"grpo": "GRPOConfig", "dpo": "DPOConfig"}


def require_rlhf(recipe: Recipe) -> str:
    kind = rlhf.rlhf_type(recipe)
    if kind is None:
        raise UsageError("RECIPE", "this recipe is not an RLHF run (settings.rlhf_type is unset): `emit trl` writes "
                         "a GRPOConfig / DPOConfig", "use `autotune emit hf` for a supervised recipe, or probe with --rlhf-type grpo|dpo")
    return kind


def config_class(recipe: Recipe):
    """TRL's config dataclass for the recipe (imports trl)."""
    import trl

    return getattr(trl, CONFIGS[require_rlhf(recipe)])


def check_offload(recipe: Recipe) -> None:
    """TRL has no offload_model / offload_optimizer. Without sleep they change no peak (vLLM's share
    is held throughout, so training holds share + model + optimizer + activations either way);
    with sleep the generation phase would hold the model and optimizer beside the woken share."""
    s = recipe.settings
    offloaded = [k for k in ("offload_model", "offload_optimizer") if getattr(s, k)]
    if offloaded and s.use_vllm and s.sleep_level:
        raise UsageError("RECIPE", f"this recipe relies on ms-swift's {' and '.join(offloaded)} with sleep_level "
                         f"{s.sleep_level}: TRL has no such argument, so the model and optimizer would stay on the card "
                         "while vLLM generates", "use `autotune emit swift`, or re-probe for TRL without --offload-model/--offload-optimizer")


def config_arguments(recipe: Recipe, output_dir: str = "output") -> dict:
    """GRPOConfig / DPOConfig keyword values: emit hf's TrainingArguments plus the RLHF settings."""
    kind = require_rlhf(recipe)
    check_offload(recipe)
    s = recipe.settings
    args = hf.training_arguments(recipe, output_dir)
    for precision in ("bf16", "fp16"):
        args.setdefault(precision, False)  # TRL's default bf16=None turns it on where supported
    if check_strategy(recipe) == "fsdp":
        args[checkpointing_names()[0]] = False  # FSDP's own activation_checkpointing (fsdp_config) does it; TRL defaults to on
    args["model_init_kwargs"] = {"dtype": s.torch_dtype, "attn_implementation": s.attn_implementation}
    if s.beta is not None:
        args["beta"] = float(s.beta)
    if kind == "dpo":
        if s.max_length is not None:
            args["max_length"] = int(s.max_length)
        args["precompute_ref_log_probs"] = bool(s.precompute_ref_log_probs)
        return args
    for key in ("num_generations", "max_completion_length"):
        if getattr(s, key) is not None:
            args[key] = int(getattr(s, key))
    args["steps_per_generation"] = rlhf.steps_per_generation(recipe)
    args["use_vllm"] = bool(s.use_vllm)
    if s.use_vllm:
        mode = s.vllm_mode or "colocate"
        args["vllm_mode"] = mode
        if mode == "colocate" and s.vllm_gpu_memory_utilization is not None:
            args["vllm_gpu_memory_utilization"] = float(s.vllm_gpu_memory_utilization)
        args["vllm_enable_sleep_mode"] = bool(s.sleep_level)
        if s.max_length and s.max_completion_length:
            args["vllm_max_model_length"] = int(s.max_length + s.max_completion_length)  # the context the share was sized for
    return args


def notes(recipe: Recipe) -> list[str]:
    """What the config cannot say (JSON has no comments): the sidecar carries it."""
    s = recipe.settings
    out = rlhf.notes(recipe, "trl")
    for note in (image_resize_note(recipe), video_frames_note(recipe)):
        if note:
            out.append(note)
    if s.max_pixels:
        out.append(f"images were probed at max_pixels {s.max_pixels}, prompt tokens included: pass processing_class="
                   f"AutoProcessor.from_pretrained(model, max_pixels={s.max_pixels}) to the trainer (without one TRL loads the "
                   "model's preprocessor_config.json, whose max_pixels may be larger)")
    if s.rlhf_type == "grpo":
        if s.max_length:
            out.append(f"prompts were probed at {s.max_length} tokens (max_prompt_length): GRPOConfig has no prompt "
                       "limit, so filter or truncate longer prompts in your dataset")
        if s.use_vllm and s.sleep_level == 1:
            out.append("TRL sleeps vLLM at level 2 (weights discarded too, re-sent each rollout): no more memory than level 1")
        if s.use_vllm and (s.vllm_mode or "colocate") == "server" and s.vllm_gpu_memory_utilization is not None:
            out.append(f"vllm_mode server: start `trl vllm-serve` with --gpu_memory_utilization {s.vllm_gpu_memory_utilization}")
        left = [k for k in ("offload_model", "offload_optimizer") if getattr(s, k)]
        if left:
            out.append(f"{' and '.join(left)} (ms-swift's) left out: TRL has none; without sleep they change no peak")
        out.append("GRPOTrainer needs your reward_funcs; a reward model on the card is memory the probe counted only if "
                   "the rlhf record names it")
        if s.reward_model and recipe.multimodal:
            out.append("the reward models read text alone: TRL renders each conversational prompt + completion with the reward "
                       "model's tokenizer's chat template (it needs one that takes content blocks) and passes no images; the "
                       "probe counted the prompt's words and the completion")
    return out


def model_settings(recipe: Recipe) -> dict:
    """emit hf's sidecar (model location, from_pretrained keywords, LoRA as peft_config) and the RLHF record."""
    kind = require_rlhf(recipe)
    out = hf.model_settings(recipe)
    if kind == "grpo" and "max_length" in out:
        out["max_prompt_length"] = out.pop("max_length")
    out["trainer"] = {"grpo": "GRPOTrainer", "dpo": "DPOTrainer"}[kind]
    out["config"] = CONFIGS[kind]
    out["rlhf"] = {"notes": notes(recipe), "record": recipe.rlhf}
    return out


def render(recipe: Recipe) -> str:
    return json.dumps(config_arguments(recipe), indent=2) + "\n"


def render_model(recipe: Recipe) -> str:
    return json.dumps(model_settings(recipe), indent=2) + "\n"
